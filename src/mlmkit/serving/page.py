"""The fill-mask playground served at `GET /`: `page.html` (plain HTML and a little JavaScript,
shipped in the package, no build step, nothing fetched from elsewhere) filled in with the
model's name and mask token, which it sends to the server's own `POST /fill-mask`."""

import base64
import hashlib
import html
import re
from importlib.resources import files

SPELLINGS = ("<mask>", "[MASK]")  # what fill.MASK_SPELLINGS accepts for any model
_EXAMPLE = "The Milky Way is a {} galaxy."


def render_page(model_name: str, mask_token: str | None,
                max_top_k: int) -> tuple[str, dict[str, str]]:
    """The page's HTML and the headers to send it with. Every value is HTML-escaped; the page's
    script puts what the server answers in with `textContent` only. The Content-Security-Policy
    lets only the page's own script and style run (by their hashes) and lets the page talk to
    this server only, so even markup that got through could neither run nor send anything."""
    mask = mask_token or SPELLINGS[0]
    spellings = [mask, *(s for s in SPELLINGS if s != mask)]
    # A directory name need not be UTF-8 (it then holds lone surrogates, which cannot be sent).
    model_name = model_name.encode("utf-8", "backslashreplace").decode("utf-8")
    values = {"model": model_name, "example": _EXAMPLE.format(mask),
              "spellings": spellings[0] + " (or " + " or ".join(spellings[1:]) + ")",
              "max_top_k": str(max_top_k)}
    page = files("mlmkit.serving").joinpath("page.html").read_text(encoding="utf-8")
    # The placeholders are in the markup only, so the hashes are of the file's own code.
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: html.escape(values[m[1]], quote=True), page)
    policy = "; ".join([
        "default-src 'none'", f"script-src {_hashes(page, 'script')}",
        f"style-src {_hashes(page, 'style')}", "connect-src 'self'", "img-src data:",
        "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"])
    return page, {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff"}


def _hashes(page: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()
                    + "'" for b in blocks)
