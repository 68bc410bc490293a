"""What a structure is, in DICOM's coded terms: category, type (with laterality) and region.

Codes travel from the support to every output:

* a 3D Slicer segment's ``TerminologyEntry`` tag (``context~category~type~modifier~
  anatomic context~region~region modifier``, each code ``scheme^value^meaning``) is parsed
  and written back as it came;
* a DICOM-SEG support's segment codes and an RTSTRUCT's interpreted type become the same
  structure (:func:`from_dicom`, :func:`from_rt_type`);
* a structure known only by its name gets codes from pydicom's SNOMED CT table
  (``pydicom.sr.codedict``, about 11,000 concepts) by this documented rule
  (:func:`from_name`): a leading "right"/"left" becomes the laterality modifier; words
  naming a lesion (tumour, tumor, neoplasm, lesion, mass, nodule, metastasis, GTV) make the
  category "Morphologically Abnormal Structure" and the type "Neoplasm" (CID 7150/7151);
  otherwise the category is "Anatomical Structure" and the type is the concept whose name
  is the structure's name (singular, in CamelCase: "urinary bladder" -> UrinaryBladder),
  else "Tissue". Names no rule matches are said so in the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._lazy import lazy_import

codedict = lazy_import("pydicom.sr.codedict")

SLICER_CONTEXT = "Segmentation category and type - DICOM master list"
SLICER_ANATOMY = "Anatomic codes - DICOM master list"
LESION = re.compile(r"\b(tumou?r|neoplasm|lesion|mass|nodule|metastas[ie]s|gtv|cancer|"
                    r"carcinoma)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Code:
    """One coded concept."""

    value: str
    scheme: str
    meaning: str

    def slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"

    @classmethod
    def parse(cls, text: str) -> Code | None:
        parts = text.split("^")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            return None
        return cls(parts[1], parts[0], parts[2])


ANATOMICAL = Code("123037004", "SCT", "Anatomical Structure")
ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
NEOPLASM = Code("108369006", "SCT", "Neoplasm")
TISSUE = Code("85756007", "SCT", "Tissue")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")


@dataclass(frozen=True)
class Terminology:
    """A structure's codes; ``matched`` says whether they came from somewhere (a file, a
    name the table knows) rather than the fallback."""

    category: Code
    type: Code
    modifier: Code | None = None
    region: Code | None = None
    region_modifier: Code | None = None
    matched: bool = True

    def slicer(self) -> str:
        """As a 3D Slicer ``TerminologyEntry`` tag value."""
        def c(code: Code | None) -> str:
            return code.slicer() if code else "^^"
        return "~".join([SLICER_CONTEXT, c(self.category), c(self.type), c(self.modifier),
                         SLICER_ANATOMY, c(self.region), c(self.region_modifier)])


def parse_slicer(entry: str | None) -> Terminology | None:
    """A Slicer ``TerminologyEntry`` (None when absent or malformed)."""
    if not entry:
        return None
    parts = entry.split("~")
    if len(parts) < 3:
        return None
    codes = [Code.parse(p) for p in parts]
    cat, typ = codes[1], codes[2]
    if cat is None or typ is None:
        return None
    rest = [*codes[3:], None, None, None, None]
    return Terminology(cat, typ, rest[0], rest[2], rest[3])


def _concept(words: str) -> Code | None:
    """The SNOMED CT concept of pydicom's table named like ``words`` (CamelCase)."""
    key = "".join(w[:1].upper() + w[1:] for w in re.split(r"[\s_\-]+", words.strip()) if w)
    for cand in (key, key[:-1] if key.endswith("s") else None):
        if cand:
            try:
                c = getattr(codedict.codes.SCT, cand)
            except AttributeError:
                continue
            return Code(str(c.value), str(c.scheme_designator), str(c.meaning))
    return None


def from_name(name: str) -> Terminology:
    """Codes for a structure known by its name only (see the module docstring)."""
    words = name.strip().lower().replace("_", " ")
    modifier = None
    for side, code in (("right ", RIGHT), ("left ", LEFT)):
        if words.startswith(side):
            words, modifier = words[len(side):], code
    if LESION.search(words):
        return Terminology(ABNORMAL, NEOPLASM, modifier)
    found = _concept(words)
    if found is None:
        return Terminology(ANATOMICAL, TISSUE, modifier, matched=False)
    return Terminology(ANATOMICAL, found, modifier)


RT_TYPES = {  # RTROIInterpretedType -> what it is
    "GTV": (ABNORMAL, NEOPLASM), "CTV": (ABNORMAL, NEOPLASM), "PTV": (ABNORMAL, NEOPLASM),
}


def from_rt_type(kind: str | None, name: str) -> Terminology:
    """Codes for an RTSTRUCT ROI: its interpreted type where it says (GTV, CTV, PTV), else
    its name."""
    if kind and kind.upper() in RT_TYPES:
        cat, typ = RT_TYPES[kind.upper()]
        return Terminology(cat, typ)
    return from_name(name)


def from_dicom(desc) -> Terminology | None:
    """The codes of a DICOM-SEG segment description (pydicom dataset)."""
    def code(seq_name: str) -> Code | None:
        seq = getattr(desc, seq_name, None)
        if not seq:
            return None
        item = seq[0]
        return Code(str(item.CodeValue), str(item.CodingSchemeDesignator),
                    str(getattr(item, "CodeMeaning", "")))
    cat, typ = code("SegmentedPropertyCategoryCodeSequence"), \
        code("SegmentedPropertyTypeCodeSequence")
    if cat is None or typ is None:
        return None
    type_item = desc.SegmentedPropertyTypeCodeSequence[0]
    mods = getattr(type_item, "SegmentedPropertyTypeModifierCodeSequence", None)
    modifier = Code(str(mods[0].CodeValue), str(mods[0].CodingSchemeDesignator),
                    str(getattr(mods[0], "CodeMeaning", ""))) if mods else None
    return Terminology(cat, typ, modifier, code("AnatomicRegionSequence"))


def of(entry: str | None, name: str) -> Terminology:
    """A structure's codes: its Slicer terminology entry where it has one, else its name."""
    return parse_slicer(entry) or from_name(name)
