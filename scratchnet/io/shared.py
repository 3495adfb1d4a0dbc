"""Where the shared data folder is: Tiny-ImageNet-200, the ILSVRC-2012 val photos, the Oxford-IIIT Pet
photos and SqueezeNet's weights (see its README). The one place that reads $SCRATCHNET_SHARED; the
demo, SqueezeNet's weights, the tests and the benches all ask here."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SCRATCHNET_SHARED"

#: the folder above the scratchnet package: a source checkout's root, whose ../shared is the project's
REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_candidates() -> list[Path]:
    """The places the shared folder is looked for, in order: $SCRATCHNET_SHARED when set (an empty value
    counts as unset), ../shared beside the repository (the project's own), ../shared from the current
    directory (for an installed scratchnet, which has no repository); each once."""
    places = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    for p in (REPO_ROOT.parent / "shared", Path.cwd() / ".." / "shared"):
        if all(os.path.abspath(p) != os.path.abspath(q) for q in places):
            places.append(p)
    return places


def shared_dir() -> Path:
    """The shared folder: $SCRATCHNET_SHARED when set (a setting is taken as it is, there or not, so that
    a message can name it), else the first ../shared of shared_candidates that holds data/ or models/,
    else the one beside the repository."""
    places = shared_candidates()
    if os.environ.get(ENV_VAR):
        return places[0]
    return next((p for p in places if (p / "data").is_dir() or (p / "models").is_dir()), places[0])
