"""medseg's SAM2 video predictor: a subclass of sam2's own, selected through sam2's builder.

sam2 chooses its predictor class with the Hydra override ``++model._target_=...`` (that is
how it selects ``SAM2VideoPredictorVOS``); medseg passes its own class the same way, so the
real builder, config and checkpoint loading are used unchanged. Everything medseg does
beyond sam2's public calls lives here:

* an inference state over frames whose encoder features come from medseg's batched
  feature store instead of a JPEG folder (:meth:`new_state`, :meth:`_get_image_feature`);
* propagation through a mask-prompted state with outputs beyond the reach of SAM2's
  memory dropped as it moves on (:meth:`track`); equal to ``propagate_in_video``;
* a support member's mask prompt encoded once, exactly as ``add_new_mask`` followed by
  ``propagate_in_video_preflight`` encodes it (:meth:`condition`);
* frame 1 of many independent 2-frame clips [support member, query frame] in one batched
  ``track_step`` call (:meth:`track_pairs`).

:func:`check_compatibility` runs when a model is built: it checks the sam2 version and that
sam2 still has the state keys and attributes used here, and fails with a clear message
otherwise.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from packaging.version import Version
from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.utils.misc import fill_holes_in_mask_scores

from ..errors import ModelError

SUPPORTED_SAM2 = (">=1.1.0", "<1.2")
TARGET = f"{__name__}.MedsegVideoPredictor"
FEATURES = "medseg_features"  # state key: frame index -> encoder output (medseg's own key)
# keys of sam2's init_state (sam2 1.1.0), each set in new_state below
STATE_KEYS = frozenset({
    "images", "num_frames", "offload_video_to_cpu", "offload_state_to_cpu", "video_height",
    "video_width", "device", "storage_device", "point_inputs_per_obj", "mask_inputs_per_obj",
    "cached_features", "constants", "obj_id_to_idx", "obj_idx_to_id", "obj_ids",
    "output_dict_per_obj", "temp_output_dict_per_obj", "frames_tracked_per_obj",
})
USED = ("num_maskmem", "max_obj_ptrs_in_encoder", "memory_temporal_stride_for_eval",
        "image_size", "fill_hole_area", "non_overlap_masks", "track_step", "add_new_mask",
        "propagate_in_video_preflight", "_run_single_frame_inference", "_prepare_backbone_features",
        "forward_image", "_get_obj_num")

FeatureSource = Callable[[int], dict]


class _NoFrames:
    """``state["images"]``: frames never reach sam2 as images; features come from the store."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int):
        raise RuntimeError(f"frame {idx}: features come from medseg's store, not from images")


class MedsegVideoPredictor(SAM2VideoPredictor):
    """sam2's video predictor fed from medseg's feature store (see the module docstring)."""

    # -- state ------------------------------------------------------------------------------
    def new_state(self, num_frames: int, height: int, width: int, features: FeatureSource,
                  offload_state: bool = False) -> dict:
        """An inference state as ``init_state`` makes it, over ``num_frames`` frames of
        ``height`` x ``width`` whose encoder outputs ``features(frame_idx)`` returns."""
        device = self.device
        return {
            "images": _NoFrames(num_frames),  # never read (see _get_image_feature)
            "num_frames": num_frames,
            "offload_video_to_cpu": True,  # no frames are held on the device
            "offload_state_to_cpu": offload_state,
            "video_height": height,  # output masks are resized to this
            "video_width": width,
            "device": device,
            "storage_device": torch.device("cpu") if offload_state else device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},  # the frame being processed: (image, backbone_out)
            "constants": {},  # maskmem_pos_enc, shared by all frames
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},  # per object: cond/non-cond frame outputs (memory)
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            FEATURES: features,
        }

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        """Features of a frame from medseg's store; the rest is sam2's own method."""
        source = inference_state.get(FEATURES)
        if source is not None and frame_idx not in inference_state["cached_features"]:
            # sam2 only expands the image and hands it back; callers discard it
            image = torch.empty(1, 3, 0, 0, device=inference_state["device"])
            inference_state["cached_features"] = {frame_idx: (image, source(frame_idx))}
        return super()._get_image_feature(inference_state, frame_idx, batch_size)

    # -- memory reach -------------------------------------------------------------------------
    def memory_window(self) -> int:
        """How many frames back (in tracking order) SAM2 reads non-conditioning outputs.

        Mask memories: the previous frame, then ``num_maskmem - 2`` more, every ``stride``-th
        frame; object pointers: up to ``max_obj_ptrs_in_encoder - 1`` frames back. Seen from
        the frame just processed, the next frame reaches back ``max(...)`` frames.
        """
        stride = max(1, int(self.memory_temporal_stride_for_eval))
        mask_reach = (self.num_maskmem - 2) * stride + stride - 1
        ptr_reach = self.max_obj_ptrs_in_encoder - 2 if self.use_obj_ptrs_in_encoder else 0
        return max(mask_reach, ptr_reach, 1)

    def _prune(self, state: dict, current: int, window: int) -> None:
        """Drop non-conditioning outputs further than ``window`` frames from ``current`` and
        from every conditioning frame (a pass in the other direction starts there and reads
        the outputs around it)."""
        for out in state["output_dict_per_obj"].values():
            nc, cond = out["non_cond_frame_outputs"], out["cond_frame_outputs"]
            for f in [f for f in nc if abs(f - current) > window
                      and all(abs(f - c) > window for c in cond)]:
                del nc[f]

    # -- volume propagation -----------------------------------------------------------------
    def prompt(self, state: dict, frame_idx: int, masks: Sequence[torch.Tensor]) -> None:
        """Mask prompt per object (object ``k`` = ``masks[k]``) on one frame, encoded."""
        for obj, m in enumerate(masks):
            self.add_new_mask(state, frame_idx, obj, m)
        self.propagate_in_video_preflight(state)

    def prompt_frames(self, state: dict, prompts: dict[int, dict[int, torch.Tensor]]) -> int:
        """Mask prompts on several frames (``prompts[frame][object]``), SAM2's own
        interactive mode: ``add_new_mask`` object by object (object ``k`` is id ``k``), each
        on its prompted frames in order, then encoded. Returns the first prompted frame,
        where propagation starts (as ``propagate_in_video``'s default)."""
        objects = sorted({o for per in prompts.values() for o in per})
        for obj in objects:
            for f in sorted(prompts):
                if obj in prompts[f]:
                    self.add_new_mask(state, f, obj, prompts[f][obj])
        self.propagate_in_video_preflight(state)
        return min(prompts)

    @torch.inference_mode()
    def track(self, state: dict, start: int, reverse: bool = False, prune: bool = True
              ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``propagate_in_video`` for a prompted state, without progress bar, dropping
        outputs SAM2's memory can no longer reach. Yields ``(frame, logits (K, 1, H, W),
        object scores (K,))``."""
        self.propagate_in_video_preflight(state)
        n, k = state["num_frames"], self._get_obj_num(state)
        if reverse:
            order = range(start, -1, -1) if start > 0 else range(0)
        else:
            order = range(start, n)
        window = self.memory_window()
        for f in order:
            masks, scores = [], []
            for obj in range(k):
                out_dict = state["output_dict_per_obj"][obj]
                if f in out_dict["cond_frame_outputs"]:
                    out = out_dict["cond_frame_outputs"][f]
                    pm = out["pred_masks"].to(state["device"], non_blocking=True)
                else:
                    out, pm = self._run_single_frame_inference(
                        inference_state=state, output_dict=out_dict, frame_idx=f, batch_size=1,
                        is_init_cond_frame=False, point_inputs=None, mask_inputs=None,
                        reverse=reverse, run_mem_encoder=True)
                    out_dict["non_cond_frame_outputs"][f] = out
                state["frames_tracked_per_obj"][obj][f] = {"reverse": reverse}
                masks.append(pm)
                scores.append(out["object_score_logits"].reshape(-1))
            low = torch.cat(masks, dim=0) if k > 1 else masks[0]
            yield f, self._to_video(low, state["video_height"], state["video_width"]), torch.cat(scores)
            if prune:
                self._prune(state, f, window)

    @staticmethod
    def _to_video(low_res: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Low-resolution mask logits to the frame size (as ``_get_orig_video_res_output``)."""
        if low_res.shape[-2:] == (height, width):
            return low_res
        return F.interpolate(low_res, size=(height, width), mode="bilinear", align_corners=False)

    # -- pair clips ----------------------------------------------------------------------------
    @torch.inference_mode()
    def condition(self, features: dict, masks: Sequence[torch.Tensor], height: int, width: int
                  ) -> list[dict]:
        """Frame 0 of a clip [member, query]: the member's mask prompt per object, encoded as
        ``add_new_mask`` + ``propagate_in_video_preflight`` encode it (memory features from
        the binarised low-resolution mask, stored in bf16). One output per mask."""
        state = self.new_state(2, height, width, lambda i: features if i == 0 else None)
        self.prompt(state, 0, masks)
        return [state["output_dict_per_obj"][o]["cond_frame_outputs"][0] for o in range(len(masks))]

    @torch.inference_mode()
    def track_pairs(self, queries: Sequence[dict], conds: Sequence[dict], height: int, width: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame 1 of ``B`` independent clips [member, query] in one ``track_step`` call.

        Row ``b`` tracks the object whose conditioning output is ``conds[b]`` (from
        :meth:`condition`) into the frame with encoder output ``queries[b]``. The memory
        encoder is not run (nothing reads a query frame's memory). Returns logits
        ``(B, 1, height, width)`` and object scores ``(B,)``.
        """
        b = len(queries)
        levels = range(len(queries[0]["backbone_fpn"]))
        backbone = {
            "backbone_fpn": [torch.cat([q["backbone_fpn"][lv] for q in queries]) for lv in levels],
            "vision_pos_enc": [p.expand(b, -1, -1, -1) for p in queries[0]["vision_pos_enc"]],
        }
        _, feats, pos, sizes = self._prepare_backbone_features(backbone)
        memory = {
            "maskmem_features": torch.cat([c["maskmem_features"] for c in conds]),
            "maskmem_pos_enc": [x.expand(b, -1, -1, -1) for x in conds[0]["maskmem_pos_enc"]],
            "obj_ptr": torch.cat([c["obj_ptr"] for c in conds]),
        }
        out = self.track_step(
            frame_idx=1, is_init_cond_frame=False, current_vision_feats=feats,
            current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None, mask_inputs=None,
            output_dict={"cond_frame_outputs": {0: memory}, "non_cond_frame_outputs": {}},
            num_frames=2, track_in_reverse=False, run_mem_encoder=False)
        low = out["pred_masks"]
        if self.fill_hole_area > 0:
            low = fill_holes_in_mask_scores(low, self.fill_hole_area)
        return self._to_video(low, height, width), out["object_score_logits"].reshape(-1)


def check_compatibility(predictor: SAM2VideoPredictor | None = None) -> None:
    """Fail clearly if the installed sam2 is not one medseg's predictor was built for."""
    wanted = f"sam2{','.join(SUPPORTED_SAM2)}"
    try:
        found = md.version("sam2")
    except md.PackageNotFoundError:
        found = "unknown"
    problems = []
    if found != "unknown":
        v = Version(found)
        if not (Version(SUPPORTED_SAM2[0][2:]) <= v < Version(SUPPORTED_SAM2[1][1:])):
            problems.append(f"version {found}")
    keys = _init_state_keys()
    if keys is not None and keys != STATE_KEYS:
        problems.append("init_state keys changed: " + ", ".join(sorted(keys ^ STATE_KEYS)))
    missing = [a for a in USED if predictor is not None and not hasattr(predictor, a)]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if predictor is not None and getattr(predictor, "non_overlap_masks", False):
        problems.append("non_overlap_masks is on (medseg applies its own overlap rule)")
    if problems:
        raise ModelError(
            f"the installed sam2 ({found}) is not supported: {'; '.join(problems)}. medseg "
            f"supports {wanted}; install it with `pip install --no-deps \"{wanted}\"`"
        )


def _init_state_keys() -> frozenset[str] | None:
    """Keys ``SAM2VideoPredictor.init_state`` sets, read from its source (None if unavailable)."""
    try:
        src = inspect.getsource(SAM2VideoPredictor.init_state)
    except (OSError, TypeError):
        return None
    return frozenset(re.findall(r'inference_state\["(\w+)"\]\s*=', src))
