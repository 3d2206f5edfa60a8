"""Models on the Hugging Face Hub named `hf-hub:OWNER/NAME[@REVISION]`: parsing the name, and the download.

`local_model` turns a model argument into a local path: a Hub name is downloaded into huggingface_hub's cache
(or found there) and that folder is returned, read afterwards like any model directory
(`tlearn.runs.model_dir.read_config` range-checks it). Only the file names a tlearn model folder holds are
fetched (`HUB_FILES`): a repository may hold anything, and a pickle it holds is never downloaded.
Sharing a model (the model card and the upload) is `tlearn.deploy.hub`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tlearn.errors import ModelFileError
from tlearn.runs.layout import METRICS_FILE, SUMMARY_FILE
from tlearn.runs.model_dir import CONFIG_FILE, REFERENCES_FILE, WEIGHTS_FILE
from tlearn.util.text import first_line

HUB_PREFIX = "hf-hub:"
CARD_FILE = "README.md"
MODEL_FILES = (WEIGHTS_FILE, CONFIG_FILE, REFERENCES_FILE)  # what the model is (the references only with "knn")
PROVENANCE_FILES = (METRICS_FILE, SUMMARY_FILE)  # how it was made and measured
HUB_FILES = (*MODEL_FILES, *PROVENANCE_FILES, CARD_FILE)
# The Hub's repository names: an optional owner, a name of letters, digits, '-', '_' and '.', at most 96 each.
REPO_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


@dataclass(frozen=True)
class HubReference:
    """A model on the Hub as `hf-hub:OWNER/NAME[@REVISION]` names it."""

    repo_id: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> HubReference:
        """The repository (and revision) a name gives, with or without the `hf-hub:` prefix.

        Raises:
            ModelFileError: a name the Hub could not hold.
        """
        body = text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else text
        repo_id, at, revision = body.partition("@")
        if not REPO_ID.fullmatch(repo_id) or ".." in repo_id or (at and not revision):
            raise ModelFileError(
                f"{text}: not a Hub repository name (OWNER/NAME of letters, digits, '-', '_' and '.'; "
                "as a model to load: hf-hub:OWNER/NAME[@REVISION])"
            )
        return cls(repo_id, revision or None)


def is_hub_name(path: str | Path) -> bool:
    """Whether a model argument names a Hub model rather than a local path."""
    return str(path).startswith(HUB_PREFIX)


def local_model(path: str | Path) -> Path:
    """The local folder or file for a model argument: a Hub name is downloaded (or found in huggingface_hub's
    cache); a path is returned as it is.

    Raises:
        ModelFileError: the Hub name is malformed, or the download failed (the reason in one line).
    """
    if not is_hub_name(path):
        return Path(path).expanduser()
    reference = HubReference.parse(str(path))
    import huggingface_hub  # deferred: only Hub names need it

    try:
        folder = huggingface_hub.snapshot_download(
            reference.repo_id, revision=reference.revision, allow_patterns=list(HUB_FILES)
        )
    except Exception as error:  # network, authentication, missing repository or revision: all end the command
        raise ModelFileError(f"{path}: cannot download the model from the Hub ({first_line(error)})") from None
    return Path(folder)
