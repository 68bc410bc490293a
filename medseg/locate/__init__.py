"""Where the structure is: slice correspondence, presence, in-plane placement.

A user has one labelled support scan and an unlabelled query. Before anything is copied
or propagated, medseg relates the two scans:

* **shared frame of reference** (:mod:`~medseg.locate.shared`) -- the scans overlap in
  world space and their images agree there; then world position is the correspondence
  and the placement;
* **slice correspondence by content** (:mod:`~medseg.locate.content`) -- otherwise every
  query frame is compared with every support frame (each body scaled to one size and
  centred) and a line ``support_mm = slope * query_mm + offset`` is fitted to the
  similarity (:mod:`~medseg.locate.correspondence` chooses);
* **presence** (:mod:`~medseg.locate.presence`) -- the structure's first and last support
  slice, mapped through the correspondence, give the query frames where it is expected;
* **in-plane placement** (:mod:`~medseg.locate.placement`) -- where the support slice goes
  on the query frame: world position, the body's box, or a content search.

Every threshold is a named, documented parameter in :mod:`~medseg.locate.params`.
"""

from .correspondence import Correspondence, correspond, counterpart
from .params import (
    BODY,
    CORRESPONDENCE,
    PLACEMENT,
    PRESENCE,
    BodyParams,
    CorrespondenceParams,
    PlacementParams,
    PresenceParams,
)
from .placement import Placed, Placement, place, place_by_body, placement_shift
from .presence import expected_frames

__all__ = ["BODY", "CORRESPONDENCE", "PLACEMENT", "PRESENCE", "BodyParams", "Correspondence",
           "CorrespondenceParams", "Placed", "Placement", "PlacementParams", "PresenceParams",
           "correspond", "counterpart", "expected_frames", "place", "place_by_body",
           "placement_shift"]
