"""Several labelled support scans: every query slice may take its match from any of them.

A user who has corrected a few queries of a cohort adds them as supports for the rest.
Each support scan is completed, related to the query and banked on its own; then, per
structure, the banks of all supports become one bank whose parts remember their scan and
its slice correspondence (:class:`~medseg.support.groups.GroupPart`), so the position
prior and the presence are those of each scan, and the matcher picks among all members.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import InputError
from ..labels import LabelPlan, PlanEntry, SupportLabel
from .augment import Bank
from .groups import GroupPart, SupportGroup


def plan_for(plan: LabelPlan, label: SupportLabel, which: str) -> LabelPlan:
    """The run's plan with each structure's value in another support's label: by segment
    name where the structure has a given or read name, else by value."""
    by_name = {s.name.casefold(): v for v, s in label.segments.items() if s.name}
    entries = []
    for e in plan:
        v = by_name.get(e.name.casefold()) if not e.name_auto else None
        v = v if v is not None else (e.support_value if e.support_value in label.segments
                                     else None)
        if v is None:
            raise InputError(f"{which} {label.path or ''}: holds no {e.name!r} (label "
                             f"{e.support_value}); present: "
                             + ", ".join(f"{k} ({s.name})" if s.name else str(k)
                                         for k, s in sorted(label.segments.items())))
        entries.append(replace(e, support_value=v))
    return LabelPlan(tuple(entries))


def _only(group: SupportGroup, k: int, support: int) -> tuple[SupportGroup, PlanEntry]:
    """Structure ``k`` of a group on its own (its masks only), from support ``support``."""
    b = group.bank
    bank = Bank(b.images, b.masks[:, k:k + 1], b.params, b.source_slices, f"{b.key}#{k}")
    parts = [replace(p, labelled=[p.labelled[k]], support=support) for p in group.parts]
    return replace(group, entries=[group.entries[k]], bank=bank,
                   labelled=[group.labelled[k]], parts=parts), group.entries[k]


def merge(per_support: list[list[SupportGroup]], plan: LabelPlan) -> list[SupportGroup]:
    """One group per structure holding the members of every support scan."""
    found: dict[int, list[SupportGroup]] = {e.output_value: [] for e in plan}
    for j, groups in enumerate(per_support):
        for g in groups:
            for k in range(len(g.entries)):
                one, e = _only(g, k, j)
                found[e.output_value].append(one)
    out = []
    for e in plan:
        parts, offset = [], 0
        for g in found[e.output_value]:
            for p in g.parts:
                parts.append(replace(p, start=p.start + offset, stop=p.stop + offset))
            offset += len(g.bank)
        gs = found[e.output_value]
        out.append(SupportGroup(
            [s for g in gs for s in g.slices], [f for g in gs for f in g.frames], [e],
            Bank.concat([g.bank for g in gs]),
            [{**h, "support": g.parts[0].support} for g in gs for h in g.placement],
            gs[0].labelled, parts))
    return out


__all__ = ["GroupPart", "merge", "plan_for"]
