"""Reading a YAML file with errors that name the file and what is wrong (no validation here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from zmix.errors import ConfigError


def read_yaml_file(path: str | Path) -> object:
    """Return the YAML document in file ``path``, parsed (any YAML value). Raises ConfigError
    naming the file and "(file)" (missing, unreadable, not UTF-8) or "(yaml)" (with the line)."""
    where = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(where, "(file)", "no such file") from None
    except OSError as exc:
        raise ConfigError(where, "(file)", f"cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(where, "(file)", f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                          f"at offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(where, "(yaml)", f"{line}not valid YAML: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    return data
