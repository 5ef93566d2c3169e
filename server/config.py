"""``exloop serve --config exloop.toml``: the flags, written in a TOML file.

A key is a flag's name without its dashes (``port = 8080``, ``max-tool-rounds = 4``; an
underscore may stand for a dash), and every flag of ``exloop serve`` is one: the keys are read
from the command's own argparse definition, so a new flag is a valid key as soon as it exists.
A key that names no flag is an error naming it. Booleans are ``true``/``false``; repeatable
flags (``api-key``, ``cors-origins``) take a list.

Precedence: a flag on the command line wins, then the flag's environment variable, then the
file, then the default. The file's settings are turned into command-line arguments placed
before the real ones and skipped where the command line or the environment sets them, so
argparse checks their values exactly as it checks flags.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Flags that are not settings of the server itself.
_NOT_SETTINGS = frozenset({"help", "config"})


class ConfigError(ValueError):
    """A configuration file that cannot be used: unreadable, not TOML, or a bad key."""


def env_name(dest: str) -> str:
    """The environment variable of a flag (``max_tool_rounds`` → ``EXLOOP_MAX_TOOL_ROUNDS``)."""
    return f"EXLOOP_{dest.upper()}"


def read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the configuration file {path} is not valid TOML: {exc}") from None


def settings_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The flags a configuration file may set, by name without dashes (hidden test flags
    and ``--help``/``--config`` excluded)."""
    return {
        option.removeprefix("--"): action
        for action in parser._actions  # argparse keeps its actions here (stable since 2.7)
        if action.dest not in _NOT_SETTINGS and action.help is not argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--")
    }


def config_arguments(
    parser: argparse.ArgumentParser,
    document: Mapping[str, Any],
    *,
    argv: Sequence[str],
    environ: Mapping[str, str],
    source: str,
) -> list[str]:
    """Command-line arguments for the settings in ``document`` that neither ``argv`` nor
    ``environ`` sets. Raises :class:`ConfigError` naming a key that is no flag or whose
    value has the wrong shape."""
    actions = settings_actions(parser)
    arguments: list[str] = []
    for key, value in document.items():
        name = key.replace("_", "-")
        action = actions.get(name)
        if action is None:
            raise ConfigError(
                f"unknown setting '{key}' in {source}; the settings are the flags of "
                f"'exloop serve': {', '.join(sorted(actions))}"
            )
        if env_name(action.dest) in environ or _given(action, argv):
            continue
        arguments += _as_arguments(f"--{name}", action, value, key, source)
    return arguments


def _given(action: argparse.Action, argv: Sequence[str]) -> bool:
    return any(
        token == option or token.startswith(f"{option}=")
        for token in argv
        for option in action.option_strings
    )


def _as_arguments(
    option: str, action: argparse.Action, value: object, key: str, source: str
) -> list[str]:
    if action.nargs == 0:  # an on/off flag
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' in {source} must be true or false, got {value!r}")
        return [option] if value else []
    repeatable = isinstance(action, argparse._AppendAction) or getattr(action, "repeatable", False)
    values = value if isinstance(value, list) and repeatable else [value]
    arguments: list[str] = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            shape = "a string or number" + (", or a list of them" if repeatable else "")
            raise ConfigError(f"'{key}' in {source} must be {shape}, got {item!r}")
        arguments += [option, str(item)]
    return arguments
