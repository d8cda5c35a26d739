"""What the operator allows, read from the environment (the app also copies Streamlit secrets of the same names
into it at start): secure by default, so a link a stranger sends opens nothing but the built-in models.

| variable | default | meaning |
| --- | --- | --- |
| ``HEADLIGHT_MODEL_ROOTS`` | (none) | folders (``os.pathsep``-separated) whose model folders may be opened |
| ``HEADLIGHT_CORPUS_ROOTS`` | (none) | folders (``os.pathsep``-separated) whose corpus indexes the Corpus tab opens |
| ``HEADLIGHT_CORPUS_BUILDS`` | (none) | a folder where the Corpus tab builds indexes of uploads (also a corpus root) |
| ``HEADLIGHT_HUB_IDS`` | (none) | hub ids that may be downloaded, comma-separated, or ``*`` for any |
| ``HEADLIGHT_HUB_MAX_MB`` | 1024 | largest hub download, checked before downloading |
| ``HEADLIGHT_HUB_TOKEN`` | (none) | the only token a hub download ever sends (the operator's own login is never used) |
| ``HEADLIGHT_MAX_PARAMETERS`` | 500,000,000 | largest model (parameters) a folder may describe |
| ``HEADLIGHT_MAX_TOKENS`` | 8,192 | most tokens one trace may have |
| ``HEADLIGHT_MAX_NEW_TOKENS`` | 32 | most tokens one "Continue the text" may generate |
| ``HEADLIGHT_CACHE_MB`` | 1024 | bytes all cached traces and analysis results may hold together |
| ``HEADLIGHT_HEAVY_JOBS`` | 1 | heavy analyses (importance, noise, ablation, corpus report) at once; others wait |
| ``HEADLIGHT_WARM_UP`` | 1 | warm the default model in the background at start (``0``: load it on first use) |
| ``HEADLIGHT_EXAMPLES_CACHE`` | ``~/.cache/headlight/examples`` | the examples' traces on disk (``0``: none) |

The project's ``models/`` may always be opened. ``make run`` (127.0.0.1, one local user) sets the first two
permissively: your home and the project folder, and ``*``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_MODELS = Path(__file__).resolve().parent.parent / "models"


def _int(name: str, default: int, low: int = 1) -> int:
    """An integer setting; a malformed or too small value falls back to the default (the operator's typo must
    not open the app wider)."""
    try:
        value = int(os.environ.get(name, "").replace("_", "").replace(",", "") or default)
    except ValueError:
        return default
    return value if value >= low else default


def _paths(name: str) -> list[Path]:
    """The folders of a ``os.pathsep``-separated setting (``~`` expanded), blanks left out."""
    return [Path(part.strip()).expanduser() for part in os.environ.get(name, "").split(os.pathsep) if part.strip()]


def _flag(name: str) -> bool:
    """An on/off setting, on unless it says 0, false, no or off."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def _examples_cache() -> Path | None:
    """``HEADLIGHT_EXAMPLES_CACHE``: a folder, off (``0``, ...), or by default ``headlight/examples`` in the user's
    cache folder (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    value = os.environ.get("HEADLIGHT_EXAMPLES_CACHE", "").strip()
    if value and not _flag("HEADLIGHT_EXAMPLES_CACHE"):
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache") / "headlight" / "examples"


@dataclass(frozen=True)
class Settings:
    model_roots: tuple[Path, ...]
    hub_ids: frozenset[str]
    hub_any: bool
    hub_max_bytes: int
    hub_token: str | None
    max_parameters: int
    max_tokens: int
    cache_bytes: int
    heavy_jobs: int
    warm_up: bool = True
    max_new_tokens: int = 32
    corpus_roots: tuple[Path, ...] = ()
    corpus_builds: Path | None = None
    examples_cache: Path | None = None  # the examples' traces on disk (``encoder.trace_cache``); None: not kept

    @classmethod
    def from_env(cls) -> Settings:
        roots = [PROJECT_MODELS, *_paths("HEADLIGHT_MODEL_ROOTS")]
        builds = next(iter(_paths("HEADLIGHT_CORPUS_BUILDS")), None)
        ids = {part.strip() for part in os.environ.get("HEADLIGHT_HUB_IDS", "").split(",") if part.strip()}
        return cls(
            model_roots=tuple(dict.fromkeys(root.resolve() for root in roots)),
            corpus_roots=tuple(dict.fromkeys(root.resolve() for root in [*_paths("HEADLIGHT_CORPUS_ROOTS"),
                                                                         *([builds] if builds else [])])),
            corpus_builds=builds.resolve() if builds else None,
            hub_ids=frozenset(ids - {"*"}),
            hub_any="*" in ids,
            hub_max_bytes=_int("HEADLIGHT_HUB_MAX_MB", 1024) * 2**20,
            hub_token=os.environ.get("HEADLIGHT_HUB_TOKEN") or None,
            max_parameters=_int("HEADLIGHT_MAX_PARAMETERS", 500_000_000),
            max_tokens=_int("HEADLIGHT_MAX_TOKENS", 8192, low=8),
            cache_bytes=_int("HEADLIGHT_CACHE_MB", 1024) * 2**20,
            heavy_jobs=_int("HEADLIGHT_HEAVY_JOBS", 1),
            max_new_tokens=_int("HEADLIGHT_MAX_NEW_TOKENS", 32),
            warm_up=_flag("HEADLIGHT_WARM_UP"),
            examples_cache=_examples_cache(),
        )

    @property
    def custom_models(self) -> bool:
        """Whether a visitor may name a folder or hub id at all (beyond the built-in models)."""
        return len(self.model_roots) > 1 or self.hub_any or bool(self.hub_ids)

    def hub_allowed(self, repo_id: str) -> bool:
        return self.hub_any or repo_id in self.hub_ids


def settings() -> Settings:
    """The settings now (read each call: cheap, and tests may change the environment)."""
    return Settings.from_env()
