"""The Hugging Face Hub as models and datasets meet it: whether it can serve a repository now,
asked once with one request and no retry, and what to say when it cannot.

transformers and datasets retry every file they look up with backoff (1+2+4+8+8 s) when the Hub
cannot be reached, so a mistyped name or a missing network cost a newcomer 27-49 s of warnings;
this check makes the first failure final.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from .config import MlmkitError

log = logging.getLogger("mlmkit")

# Seconds the one request may take: a Hub that answers does so well within it.
HUB_TIMEOUT_S = 5.0
# What `reach` says when HF_HUB_OFFLINE is set: nothing was asked.
OFFLINE = "HF_HUB_OFFLINE=1"


def reach(repo_id: str, kind: str) -> str | None:
    """None when the Hub answers for `kind` ('model' or 'dataset') `repo_id`; else why it
    cannot be used now, in a few words (`OFFLINE`, or the network error). A Hub that answers
    no (no such repository, gated, a model without config.json) is an MlmkitError at once."""
    from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import httpx

    if constants.HF_HUB_OFFLINE:
        return OFFLINE
    try:
        if kind == "model":  # the file every model needs: also says whether it is gated
            get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=HUB_TIMEOUT_S)
        else:
            HfApi().dataset_info(repo_id, timeout=HUB_TIMEOUT_S)
    except HFValidationError:
        raise MlmkitError(f"{repo_id}: no such file or directory, and not a Hub {kind} id"
                          ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as e:
        raise refusal(repo_id, kind, e) from None
    except (OfflineModeIsEnabled, httpx.TransportError, HfHubHTTPError) as e:
        return first_line(e)
    except Exception:  # an answer this check cannot judge (an odd redirect or JSON): the
        # library's own lookups may
        log.debug("Hub check of %s %s inconclusive", kind, repo_id, exc_info=True)
    return None


def refusal(repo_id: str, kind: str, e: Exception) -> MlmkitError:
    """The Hub answered no: what to say, by the type of the answer, not its wording."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        page = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
        return MlmkitError(f"{kind} {repo_id!r}: a gated {kind}; request access at {page} and "
                           "log in with `hf auth login`")
    if isinstance(e, RepositoryNotFoundError):
        local = "directory" if kind == "model" else "file or directory"
        return MlmkitError(f"{kind} {repo_id!r}: no such local {local}, and no such {kind} on "
                           "the Hugging Face Hub (if it is private, log in with `hf auth login`)")
    if isinstance(e, RemoteEntryNotFoundError) and kind == "model":
        return MlmkitError(f"model {repo_id!r}: the Hub repository has no config.json; expected "
                           "a transformers model")
    return MlmkitError(f"{kind} {repo_id!r}: {first_line(e)}")


def first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


@contextlib.contextmanager
def offline(on: bool) -> Iterator[None]:
    """huggingface_hub and datasets in offline mode for one load when the Hub cannot be
    reached: datasets then takes its cached copy, or says it has none, at once."""
    if not on:
        yield
        return
    import datasets
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
