"""Commands as their producers send them: built, then signed with the app's token
(``commands.sign_command``; no token on the wire)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from ecovisor.contract.commands import Command, parse_command, sign_command

C = TypeVar("C", bound=Command)


def signed(cls: type[C], token: str, **fields: Any) -> C:
    """A ``cls`` command of ``fields``, signed with ``token``."""
    return sign_command(cls(**fields), token)


def signed_json(token: str, fields: dict[str, Any]) -> bytes:
    """The wire form of the command ``fields`` (with its ``type``; JSON values), signed
    with ``token``."""
    return sign_command(parse_command(json.dumps(fields)), token).to_json()
