"""Reading the site configuration file: which file (--config, then $ECOVISOR_CONFIG),
${VAR} expansion, YAML, and the one error of a configuration that cannot be used, with
readable reasons. See docs/configuration.md."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from ecovisor.contract.config import EcovisorConfig


class ConfigError(Exception):
    """A site configuration that cannot be used, with readable reasons."""


def one_line(err: BaseException) -> str:
    """An error as one line (every entry point exits with one line, never a traceback)."""
    return " ".join(str(err).split())


_ENV = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(text: str) -> str:
    """${VAR} and ${VAR:-default} in the YAML text, so tokens need not live in the file."""

    def sub(m: re.Match[str]) -> str:
        val = os.environ.get(m.group(1))
        if val is None:
            if m.group(2) is None:
                raise ConfigError(f"environment variable {m.group(1)} is not set")
            return m.group(2)
        return val

    return _ENV.sub(sub, text)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "<root>"
        msg = e.get("msg", "")
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


# libyaml's safe loader where PyYAML was built with it (its wheels are), parsed in C: a
# site of 10,000 containers in 0.8 s instead of 3.0 s, at every start of every service
# that reads the site file. The shipped site files read the same with either; libyaml
# also takes a tab before a comment (`key: 1<TAB># c`, refused by the pure loader) and
# its errors give the line and column without quoting the line
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_config(text: str, origin: str = "<string>") -> EcovisorConfig:
    try:
        data = yaml.load(_expand_env(text), Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, UnicodeError) as e:
        # (UnicodeError: libyaml encodes the text to UTF-8 first, and an environment
        # variable's undecodable byte, a lone surrogate in Python, cannot be)
        raise ConfigError(f"{origin}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    try:
        return EcovisorConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{origin}: invalid configuration:\n{_format_errors(e)}") from e


def load_config(path: str | os.PathLike[str]) -> EcovisorConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such configuration file")
    return parse_config(p.read_text(), origin=str(p))


DEFAULT_CONFIG_ENV = "ECOVISOR_CONFIG"


def config_path(explicit: str | None) -> str:
    """The configuration file to use: --config, then $ECOVISOR_CONFIG."""
    path = explicit or os.environ.get(DEFAULT_CONFIG_ENV)
    if not path:
        raise ConfigError(f"no configuration: pass --config FILE or set {DEFAULT_CONFIG_ENV}")
    return path
