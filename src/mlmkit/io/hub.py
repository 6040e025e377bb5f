"""The Hugging Face Hub as models and datasets meet it: whether it can serve a repository now,
asked once with one request and no retry, and what to say when it cannot; and as a model is
published to it: whether the login may write there (asked before the work), and the upload.

transformers and datasets retry every file they look up with backoff (1+2+4+8+8 s) when the Hub
cannot be reached, so a mistyped name or a missing network cost a newcomer 27-49 s of warnings;
this check makes the first failure final.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from mlmkit.errors import MlmkitError
from mlmkit.settings import named

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



# -- publishing ----------------------------------------------------------------------------------

def check_push_access(repo_id: str, where: str) -> str:
    """Before any work an upload would end: that the Hub answers and that the token found
    (HF_TOKEN, or `hf auth login`'s) may write to `repo_id`'s owner; the user's name. One
    request, no retry, `HUB_TIMEOUT_S` at most. `where` begins each error (the flag and
    value, or the repository)."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, httpx

    if constants.HF_HUB_OFFLINE:
        raise MlmkitError(f"{where}: {OFFLINE} is set, so nothing can be uploaded; unset it to "
                          "publish")
    token = get_token()
    if token is None:
        raise MlmkitError(f"{where}: not logged in to the Hugging Face Hub; run `hf auth login` "
                          "with a write token, or set HF_TOKEN")
    try:
        # whoami without the library's wrapper: that one waits as long as the network does.
        r = get_session().get(f"{constants.ENDPOINT}/api/whoami-v2",
                              headers=build_hf_headers(token=token), timeout=HUB_TIMEOUT_S)
        hf_raise_for_status(r)
        me = r.json()
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise MlmkitError(f"{where}: the Hub says the token is invalid or expired; run `hf "
                              "auth login --force` with a write token") from None
        raise MlmkitError(f"{where}: the Hub cannot check the login now ({first_line(e)})"
                          ) from None
    except (httpx.TransportError, OSError) as e:
        raise MlmkitError(f"{where}: cannot reach the Hugging Face Hub at {constants.ENDPOINT} "
                          f"({first_line(e)})") from None
    except ValueError:  # an answer that is not JSON: the upload will say what is wrong
        log.debug("whoami answer unreadable", exc_info=True)
        return ""
    problem = write_refusal(me, repo_id) if isinstance(me, dict) else None
    if problem:
        raise MlmkitError(f"{where}: {problem}")
    return str(me.get("name", "")) if isinstance(me, dict) else ""


def write_refusal(me: dict, repo_id: str) -> str | None:
    """Why the login `me` (whoami's answer) cannot write to `repo_id`, or None when it can (or
    the answer does not say)."""
    name = me.get("name")
    owner = repo_id.split("/")[0] if "/" in repo_id else name
    orgs = [o.get("name") for o in me.get("orgs") or [] if isinstance(o, dict)]
    if name and owner != name and owner not in orgs:
        return (f"logged in as {name}, who is not a member of {owner}; publish under {name}/ "
                "or an organization you belong to")
    token = (me.get("auth") or {}).get("accessToken") or {}
    role = token.get("role")
    if role == "read":
        return ("the token is read-only; create a write token at "
                "https://huggingface.co/settings/tokens and run `hf auth login --force`")
    if role == "fineGrained":
        scoped = (token.get("fineGrained") or {}).get("scoped") or []
        if not any((s.get("entity") or {}).get("name") == owner
                   and "repo.write" in (s.get("permissions") or []) for s in scoped):
            return (f"the fine-grained token cannot write to {owner}'s repositories; give it "
                    "'Write access to contents/settings of all repos' for them")
    return None


def upload_dir(folder: Path, repo_id: str, where: str, *, message: str, allow: list[str],
               ignore: list[str], private: bool = False, revision: str | None = None,
               shown: Path | None = None) -> str:
    """Upload the files of `folder` that match `allow` and not `ignore` to the model repository
    `repo_id` (created if missing; `private` ones private, and refused if it exists public),
    on branch `revision` (created from main if missing), as one commit; its URL. `shown`: the
    directory errors name, when `folder` is a temporary copy of it."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        # None, not False: a repository not asked to be private gets the owner's default.
        api.create_repo(repo_id, exist_ok=True, private=private or None)
        if private and not api.repo_info(repo_id).private:
            raise MlmkitError(f"{where}: {named('private', True)}, but the repository exists "
                              "and is public; make it private in its settings, or choose "
                              "another name")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                 allow_patterns=allow, ignore_patterns=ignore,
                                 commit_message=message, revision=revision)
    except MlmkitError:
        raise
    except Exception as e:
        raise MlmkitError(f"{where}: upload failed: {first_line(e)} (nothing in "
                          f"{shown or folder} changed)") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")


# Local names: checked without torch or transformers, so the CLI can refuse a mistyped path
# before it pays for importing them.

def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a path: it starts like one, it cannot be a Hub id
    ('namespace/name': one slash at most, no backslash, no '..'), or the directory it would
    sit in exists here."""
    if name.startswith((".", "~", "/")) or not _is_repo_id(name):
        return True
    parent = Path(name).parent
    return parent != Path(".") and parent.is_dir()


def _no_such_dir(name: str) -> MlmkitError:
    """'no such local directory', with the nearest sibling's name when one is close."""
    path = Path(name).expanduser()
    parent = path.parent
    if not parent.is_dir():
        return MlmkitError(f"model {name}: no such local directory ({os.path.dirname(name)} does "
                           "not exist either)")
    siblings = [p.name for p in parent.iterdir() if p.is_dir()]
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    hint = f" (did you mean {os.path.join(os.path.dirname(name), close[0])}?)" if close else ""
    return MlmkitError(f"model {name}: no such local directory{hint}")


def model_dir(name: str) -> Path | None:
    """The local directory `name` names, or None for a Hub id. A name that can only be a path
    and names no directory is an error at once, before any Hub lookup: a typo in a path must
    not wait for the network."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MlmkitError(f"model {name}: is a file; expected a model directory (config.json, "
                          "weights and tokenizer files) or a Hub id")
    if _looks_like_path(name):
        from huggingface_hub import try_to_load_from_cache

        # A valid Hub id whose first part happens to be a directory here: the Hub copy in the
        # cache wins, so that such a directory does not hide a model already downloaded.
        if _is_repo_id(name) and isinstance(try_to_load_from_cache(name, "config.json"), str):
            return None
        raise _no_such_dir(name)
    return None
