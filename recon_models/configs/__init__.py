"""The shipped ``recon-train`` configs (package data): ``recon-train fit --config unet`` finds them.

Their relative paths (``data/...``, ``runs/<config>/...``) are read from the working directory.

Example:
    >>> from recon_models.configs import config_names, config_path
    >>> "unet" in config_names(), config_path("unet").name
    (True, 'unet.yaml')
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def config_names() -> list[str]:
    """The names of the shipped configs (file names without ``.yaml``)."""
    return sorted(path.stem for path in _HERE.glob("*.yaml"))


def config_path(name: str) -> Path:
    """The shipped config ``name`` (``unet`` or ``unet.yaml``).

    Raises:
        FileNotFoundError: no shipped config has that name (the message lists them).
    """
    path = _HERE / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"--config {name}: no such file, and no shipped config of that name "
                                f"(shipped: {', '.join(config_names())})")
    return path


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with every ``--config NAME`` that is not a file replaced by the shipped config's path.

    A value that exists as a file, or that names a folder or a ``.yml``/``.json`` file, is kept.

    Raises:
        FileNotFoundError: ``--config NAME`` is neither a file nor a shipped config.
    """
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = _resolve(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _resolve(arg.split("=", 1)[1])
    return out


def _resolve(value: str) -> str:
    if Path(value).exists() or "/" in value or "\\" in value or value.endswith((".yml", ".json")):
        return value
    if value.lstrip().startswith(("{", "[")) or "\n" in value or ":" in value:  # an inline config
        return value
    return str(config_path(value))
