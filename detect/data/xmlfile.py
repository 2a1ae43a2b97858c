"""Reading annotation XML safely, with errors that name the file; the ILSVRC / VOC annotation parse.

Annotation files (ILSVRC, VOC) never carry a document type declaration, and every XML attack that
matters here (entity expansion "billion laughs", external entities, external DTDs) needs one: entities
can only be declared inside a DTD. So a document with a ``<!DOCTYPE`` is refused outright
(defusedxml's ``DTDForbidden``, its strictest policy, ``forbid_dtd=True``). Two ways, one rule:
- a file in an ASCII-compatible encoding (no NUL byte, no UTF-16/32 byte order mark) cannot hide a
  declaration from a byte search for ``<!DOCTYPE`` (XML keywords are case-sensitive), so one without
  it is parsed by the standard library's C parser as it is;
- any other file goes through a tree builder whose ``doctype`` hook raises, which the parser calls
  when the declaration starts, before any entity in it is read, in whatever encoding.
The C parser is faster than defusedxml's pure-Python parser (figures: ``benchmarks/evaluation.md``),
which matters when a whole validation set is read for every evaluation.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from defusedxml.common import DefusedXmlException, DTDForbidden

from detect.data.records import MAX_PIXELS

__all__ = ["read_xml_root", "parse_xml_bytes", "finite_number", "parse_annotation_xml"]

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


class _RefusingTreeBuilder(ET.TreeBuilder):
    """The standard tree builder, refusing any document type declaration (and with it every entity)."""

    def doctype(self, name, pubid, system):
        raise DTDForbidden(name, system, pubid)


_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16/32 byte order marks (UTF-32 LE starts like UTF-16 LE)


def parse_xml_bytes(data: bytes) -> ET.Element:
    """Root element of an XML document given as bytes; ``DTDForbidden`` for a ``<!DOCTYPE``,
    ``xml.etree.ElementTree.ParseError`` for malformed XML."""
    if b"\x00" not in data and not data.startswith(_WIDE_BOMS):  # an ASCII-compatible encoding
        if b"<!DOCTYPE" in data:
            raise DTDForbidden(None, None, None)
        parser = ET.XMLParser()  # the C tree builder: no declaration can be in this document
    else:
        parser = ET.XMLParser(target=_RefusingTreeBuilder())
    parser.feed(data)
    return parser.close()


def read_xml_root(path: str | Path) -> ET.Element:
    """Root element of an XML file; ``ValueError`` naming the file when it is malformed, unreadable, or
    refused (a document type declaration, hence possible entities or external references)."""
    try:
        return parse_xml_bytes(Path(path).read_bytes())
    except ET.ParseError as e:
        raise ValueError(f"{path}: malformed XML ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read annotation ({e.strerror})") from None
    except DefusedXmlException as e:
        raise ValueError(f"{path}: refused XML ({type(e).__name__}: {e})") from None


def finite_number(text) -> float | None:
    """An XML number (``" 378.5 "``) as a float; ``None`` when missing, not a number or not finite."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def parse_annotation_xml(path: str | Path, classes, number, offset: int = 0, difficult: bool = False,
                         root_tag: str | None = None) -> tuple:
    """One ILSVRC / VOC annotation file as a raw tuple ``(width, height, boxes [[x1, y1, x2, y2], ...],
    labels, flags, problems)`` (:meth:`detect.data.cache.ParsedFolder.from_raw`), from the root's ``<size>``
    and ``<object>`` children (``<name>``, a class of ``classes``; ``<bndbox>`` ``xmin ymin xmax ymax``);
    ``number(text)``: a number or ``None`` (missing, not finite). Boxes: the stored values minus
    ``offset``; ``flags``: ``<difficult>`` > 0 with ``difficult``. An object is dropped with one line in
    ``problems`` when its class is unknown, a coordinate missing or not a number, beyond ``MAX_PIXELS``,
    or the box inverted. ``width``/``height``: ``None`` when the size is missing, below 1, not a number
    or beyond ``MAX_PIXELS``. ``ValueError`` naming the file when it is not readable XML or its root is
    not ``root_tag`` (when given)."""
    root = read_xml_root(path)
    if root_tag is not None and root.tag != root_tag:
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <{root_tag}>")
    lookup = classes._lookup
    size: dict = {}
    boxes, labels, flags, problems = [], [], [], []
    k = 0
    for node in root:  # direct children: one pass, no path queries (20,121 files per evaluation)
        if node.tag == "size":
            size = {c.tag: c.text for c in node}
        if node.tag != "object":
            continue
        k += 1
        fields = {c.tag: c for c in node}  # the last of each tag
        name = (getattr(fields.get("name"), "text", None) or "").strip()
        values = {b.tag: b.text for b in fields.get("bndbox", ())}
        label = lookup.get(name)
        coords = [number(values.get(t)) for t in _BOX_TAGS]
        if label is None:
            problems.append(f"unknown class: object {k} ({name!r})")
        elif None in coords:
            problems.append(f"missing box: object {k} ({name})")
        elif max(abs(c) for c in coords) > MAX_PIXELS:
            problems.append(f"coordinate out of range: object {k} ({name}) {coords} (beyond {MAX_PIXELS} pixels)")
        elif coords[2] < coords[0] or coords[3] < coords[1]:
            problems.append(f"inverted box: object {k} ({name}) {coords}")
        else:
            boxes.append([c - offset for c in coords])
            labels.append(label)
            flags.append(difficult and (number(getattr(fields.get("difficult"), "text", None)) or 0) > 0)
    width, height = number(size.get("width")), number(size.get("height"))
    if not (width and height and width >= 1 and height >= 1 and max(width, height) <= MAX_PIXELS):
        return None, None, boxes, labels, flags, problems
    return int(width), int(height), boxes, labels, flags, problems
