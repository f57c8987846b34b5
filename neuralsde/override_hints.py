"""Did-you-mean hints for command-line overrides that Hydra refused before any work: a misspelt key
(``solver.dtt=0.5``: "Could not override 'solver.dtt'. To append to your config use +solver.dtt=0.5", advice that
adds a key nothing reads) or a misspelt group option (``experiment=ou_sdgan``: the options listed, none named).

Worked out only after Hydra has failed, so a run that starts pays nothing for it."""
from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Callable

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def run_with_hints(main: Callable[[], object], config_name: str) -> None:
    """Call a ``@hydra.main`` function; when it fails (Hydra exits with status 1 after printing its own message, or
    raises under ``HYDRA_FULL_ERROR=1``), print a line per misspelt override naming the nearest valid one."""
    try:
        main()
    except SystemExit as stop:
        if stop.code == 1:
            _print_hints(config_name)
        raise
    except Exception:
        _print_hints(config_name)
        raise


def _print_hints(config_name: str) -> None:
    try:
        from hydra._internal.utils import get_args_parser  # how hydra.main itself reads the command line

        args, _ = get_args_parser().parse_known_args()
        hints = override_hints(args.overrides, args.config_name or config_name)
    except Exception:  # noqa: BLE001 - a hint is a nicety: never hide Hydra's own report behind a second error
        return
    for hint in hints:
        print(f"ConfigError: {hint}", file=sys.stderr)


def override_hints(overrides: list[str], config_name: str = "train") -> list[str]:
    """One line per override whose key is not in the composed config, or whose group option does not exist,
    naming the nearest valid key or option as the fix. Sweep overrides (``a=1,2``) are checked value by value."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # after hydra.main: its own search path (--config-dir included)
        return _hints(overrides, config_name, GlobalHydra.instance().config_loader())
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return _hints(overrides, config_name, GlobalHydra.instance().config_loader())


def _hints(overrides: list[str], config_name: str, loader) -> list[str]:
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(overrides)
    hints, base, keys = [], [], []
    for override in parsed:
        key, line = override.key_or_group, override.input_line or ""
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else None
        options = [] if override.package or override.is_delete() else loader.get_group_options(key)
        if options:  # a config group: every value must be one of its options
            bad = [v for v in (values or [override.get_value_string()]) if v not in options and v != "null"]
            for value in bad:
                near = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
                if near:
                    hints.append(f"{key}={value} is not an option of the {key} group. Fix: {key}={near[0]}")
            if not bad:
                base.append(line if values is None else f"{override.get_key_element()}={values[0]}")
        elif override.is_add() or override.is_force_add():  # + and ++ add keys by design
            base.append(line if values is None else f"{override.get_key_element()}={values[0]}")
        else:
            keys.append(override)
    if not keys:
        return hints
    try:  # the config's keys do not depend on key=value overrides, which may only set existing ones
        cfg = OmegaConf.to_container(compose(config_name, base, return_hydra_config=True), resolve=False)
    except Exception:  # noqa: BLE001 - another problem, which Hydra has reported
        return hints
    known = set(_dotted_keys(cfg))
    for override in keys:
        if override.key_or_group not in known:
            hints.append(_key_hint(override, known))
    return hints


def _key_hint(override, known: set[str]) -> str:
    """The nearest existing key, compared within the deepest section of ``key`` that exists (on whole dotted
    names a long shared prefix made unrelated keys look alike: data.source.path ~ data.source.n_paths)."""
    key = override.key_or_group
    value = "" if override.is_delete() else "=" + override.get_value_string()
    prefix = "~" if override.is_delete() else ""
    parent = key.rpartition(".")[0]
    while parent and parent not in known:
        parent = parent.rpartition(".")[0]
    start = len(parent) + 1 if parent else 0
    names = sorted({k[start:] for k in known if k.startswith(parent + ".")} if parent else known)
    near = difflib.get_close_matches(key[start:], names, n=1, cutoff=0.75)
    if near:
        return (f"{key} is not a key of this config. Fix: {prefix}{key[:start]}{near[0]}{value} (the nearest key; "
                "a + in front would add a new key, not set this one)")
    siblings = [name for name in names if "." not in name]
    shown = ", ".join(siblings[:30]) + (", ..." if len(siblings) > 30 else "")
    where = f"{parent} has" if parent else "the top level has"
    # the same name one section deeper (data.cache_dir for data.source.cache_dir) is too far for difflib
    leaf = key.rpartition(".")[2]
    deeper = [f"{parent}.{name}" for name in names if parent and "." in name and name.rpartition(".")[2] == leaf]
    guess = f"did you mean {' or '.join(deeper)}? Or " if deeper else ""
    return (f"{key} is not a key of this config. Fix: {guess}use one that exists ({where}: {shown}; `--cfg job` "
            "lists all).")


def _dotted_keys(node, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    out = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        out += [full, *_dotted_keys(value, f"{full}.")]
    return out
