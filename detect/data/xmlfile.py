"""Reading annotation XML safely (defusedxml), with errors that name the file."""
from __future__ import annotations

from pathlib import Path

from defusedxml import ElementTree as SafeET

__all__ = ["read_xml_root"]


def read_xml_root(path: str | Path):
    """Root element of an XML file; ``ValueError`` naming the file when it is malformed, unreadable, or
    refused by defusedxml (entities, DTDs)."""
    try:
        return SafeET.parse(path).getroot()
    except SafeET.ParseError as e:
        raise ValueError(f"{path}: malformed XML ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read annotation ({e.strerror})") from None
    except Exception as e:  # defusedxml refusals
        raise ValueError(f"{path}: refused XML ({type(e).__name__}: {e})") from None
