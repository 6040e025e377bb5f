"""GET / is the escaped playground; in Chromium it shows the pipeline's top-k and API errors."""

import asyncio
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mlmkit import FillMask  # noqa: E402
from mlmkit.inference.fill import MASK_SPELLINGS  # noqa: E402
from mlmkit.serving.app import create_app  # noqa: E402
from mlmkit.serving.page import SPELLINGS  # noqa: E402
from mlmkit.testing import LiveServer  # noqa: E402

MILKY_WAY = "The Milky Way is a [MASK] galaxy."
# Markup where the page shows the model's name, its mask token and its candidates.
HOSTILE_NAME = '"><img src=x onerror="window.pwned=1">'
HOSTILE_MASK = "</textarea><script>window.pwned=2</script>"
HOSTILE_TOKEN = "<img src=x onerror=\"window.pwned=3\"><b>bold</b>"
WAIT_S = 20  # bound on every browser wait; each normally takes well under a second
SCREENSHOT = os.environ.get("MLMKIT_PLAYGROUND_PNG")  # set to save docs/playground.png


class HostileTokenizer:
    mask_token = HOSTILE_MASK

    def __len__(self) -> int:
        return 10


class HostileEngine:
    """A stand-in for FillMask whose name, mask token and every candidate are markup."""

    tokenizer = HostileTokenizer()
    model = SimpleNamespace(config=SimpleNamespace(_name_or_path=HOSTILE_NAME))

    def stream(self, texts, top_k=5, targets=None, **budget):  # budget: max_candidates
        for text in texts:
            masks = len(MASK_SPELLINGS.findall(text)) + text.count(HOSTILE_MASK)
            records = [{"score": 0.5, "token": 1, "token_str": HOSTILE_TOKEN,
                        "sequence": HOSTILE_TOKEN}]
            yield records if masks == 1 else [records] * masks


@pytest.fixture(scope="module")
def tiny(tiny_bert: Path) -> FillMask:
    return FillMask(str(tiny_bert), device="cpu")


def get(app, *requests: tuple[str, str, dict]) -> list[httpx.Response]:
    """Send `(method, path, kwargs)` requests to the app in-process, one after another."""

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.request(m, p, **kw) for m, p, kw in requests]

    return asyncio.run(main())


def same(got: list, want: list) -> bool:
    """Equal records; scores to float noise (a batch pads texts to another width)."""
    if want and isinstance(want[0], list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    return len(got) == len(want) and all(
        {**g, "score": 0} == {**w, "score": 0} and g["score"] == pytest.approx(w["score"])
        for g, w in zip(got, want))


# ---------------------------------------------------------------------------- in-process


def test_get_root_is_the_page_and_post_root_is_unchanged(tiny: FillMask, tiny_bert: Path) -> None:
    app = create_app(tiny)
    text = "The game runs at a [MASK] speed."
    page, post, post_fill, put = get(
        app, ("GET", "/", {}),
        ("POST", "/", {"json": {"inputs": text, "parameters": {"top_k": 3}}}),
        ("POST", "/fill-mask", {"json": {"inputs": [text, text]}}), ("PUT", "/", {}))
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<form id="fill-form"' in page.text and 'id="compute"' in page.text
    assert ">The Milky Way is a [MASK] galaxy.</textarea>" in page.text  # its own mask token
    assert f'<code id="model">{tiny_bert.name}</code>' in page.text
    assert 'aria-live="polite"' in page.text and '<label for="text">' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert len(re.findall(r"'sha256-[A-Za-z0-9+/=]+'", policy)) == 2  # its one script, one style
    assert same(post.json(), tiny(text, top_k=3))
    assert same(post_fill.json(), tiny([text, text]))
    assert put.status_code == 405 and "error" in put.json()


def test_names_and_mask_tokens_are_escaped_into_the_page() -> None:
    page = get(create_app(HostileEngine()), ("GET", "/", {}))[0].text
    assert "<img" not in page and "<script>window" not in page and "</textarea><" not in page
    assert "&quot;&gt;&lt;img src=x onerror=&quot;window.pwned=1&quot;&gt;" in page
    assert all(MASK_SPELLINGS.fullmatch(s) for s in SPELLINGS)  # the spellings the page names


# ---------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None or not Path(chromedriver).is_file():
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=900,600", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP refusals, JS errors
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=chromedriver))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def splade_url(splade: Path):
    with LiveServer(create_app(FillMask(str(splade), device="cpu"))) as server:
        yield server.url


def compute(browser, url: str, text: str | None = None, top_k: str | None = None,
            keys: bool = False, load: bool = True) -> str:
    """Open the page (unless `load` is false), type `text` (None: keep what is there) and
    `top_k`, press Compute (or Ctrl+Enter) and wait for the answer: 'done' or 'error'."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    if load:
        browser.get(url + "/")
    box = browser.find_element(By.ID, "text")
    if text is not None and len(text) > 200:  # too slow to type key by key
        browser.execute_script("arguments[0].value = arguments[1]", box, text)
    elif text is not None:
        box.clear()
        box.send_keys(text)
    if top_k is not None:
        field = browser.find_element(By.ID, "top-k")
        field.clear()
        field.send_keys(top_k)
    results = browser.find_element(By.ID, "results")
    # Reset, so that an earlier answer on the same page is not taken for this one.
    browser.execute_script("arguments[0].dataset.state = 'idle'", results)
    if keys:
        box.send_keys(Keys.CONTROL, Keys.ENTER)
    else:
        browser.find_element(By.ID, "compute").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda _: results.get_attribute("data-state") in ("done", "error"))
    return results.get_attribute("data-state")


def shown(browser) -> list[dict]:
    """The groups on the page: their label and, per candidate, token, score and bar width."""
    return browser.execute_script("""
        return [...document.querySelectorAll("#results .group")].map(g => ({
          label: g.querySelector("h2").textContent,
          candidates: [...g.querySelectorAll(".candidate")].map(c => ({
            token: c.querySelector(".token").textContent,
            score: parseFloat(c.querySelector(".score").textContent),
            width: parseFloat(c.querySelector(".fill").style.width)}))}))""")


def pipeline_records(model: Path, text: str, top_k: int) -> list:
    import transformers

    transformers.logging.disable_progress_bar()
    return transformers.pipeline("fill-mask", model=str(model), device="cpu")(text, top_k=top_k)


def test_the_page_shows_the_pipelines_candidates(browser, splade: Path, splade_url: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # drained: only this page's messages below
    assert compute(browser, splade_url, MILKY_WAY) == "done"
    want = pipeline_records(splade, MILKY_WAY, 5)  # 5: the page's default top k
    (group,) = shown(browser)
    assert group["label"] == "mask 1"
    assert [c["token"] for c in group["candidates"]] == [r["token_str"] for r in want]
    assert [c["score"] for c in group["candidates"]] == pytest.approx(
        [100 * r["score"] for r in want], abs=0.051)  # shown to one decimal
    assert [c["width"] for c in group["candidates"]] == pytest.approx(
        [100 * r["score"] for r in want], abs=1e-3)  # bars to scale
    top = browser.find_element(By.CSS_SELECTOR, "#results .candidate .token")
    assert top.is_displayed() and top.text == want[0]["token_str"]
    assert browser.find_element(By.ID, "model").text == splade.name  # the directory served
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert [e["message"] for e in browser.get_log("browser") if e["level"] != "INFO"] == []
    if SCREENSHOT:  # a 900x600 viewport (the window's size includes its frame)
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 900, "height": 600, "deviceScaleFactor": 1, "mobile": False})
        browser.save_screenshot(SCREENSHOT)
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_two_masks_show_two_groups(browser, splade: Path, splade_url: str) -> None:
    text = "Paris is the [MASK] of <mask>."  # both spellings, whatever the model's own
    assert compute(browser, splade_url, text, top_k="3", keys=True) == "done"
    want = pipeline_records(splade, text.replace("<mask>", "[MASK]"), 3)
    groups = shown(browser)
    assert [g["label"] for g in groups] == ["mask 1", "mask 2"]
    assert [[c["token"] for c in g["candidates"]] for g in groups] == [
        [r["token_str"] for r in records] for records in want]


def test_errors_are_the_apis_and_shown_in_place(browser, tiny: FillMask) -> None:
    from selenium.webdriver.common.by import By

    with LiveServer(create_app(tiny)) as server:
        assert compute(browser, server.url, "No mask here.") == "error"
        error = browser.find_element(By.ID, "error")
        assert error.text == ("Error 400: 'inputs': no mask in 'No mask here.': expected <mask> "
                              "or [MASK]")
        assert shown(browser) == []
        assert compute(browser, server.url, top_k="0") == "error"
        assert browser.find_element(By.ID, "error").text == (
            "Error 400: 'parameters.top_k' 0: expected 1 to 100")
        assert compute(browser, server.url, "word " * 600 + "[MASK]") == "error"
        assert browser.find_element(By.ID, "error").text == (
            "Error 413: 'inputs': 3006 characters, more than the server's limit of 2000")
        assert compute(browser, server.url, "a " * 600 + "[MASK]") == "error"  # the engine's
        error = browser.find_element(By.ID, "error")
        assert re.fullmatch(r"Error 422: '.*': \d+ tokens, more than the \d+ the model accepts",
                            error.text)
        # Corrected in place (no reload), the answer replaces the error.
        assert compute(browser, server.url, "A [MASK] again.", load=False) == "done"
        assert not error.is_displayed() and len(shown(browser)) == 1


def test_model_output_never_becomes_markup(browser) -> None:
    from selenium.webdriver.common.by import By

    with LiveServer(create_app(HostileEngine())) as server:
        assert compute(browser, server.url) == "done"  # the example, with the hostile mask
        assert browser.find_element(By.ID, "model").text == HOSTILE_NAME
        assert browser.find_element(By.ID, "text").get_attribute("value").startswith(
            "The Milky Way is a " + HOSTILE_MASK)
        assert shown(browser)[0]["candidates"][0]["token"] == HOSTILE_TOKEN
        assert browser.execute_script(
            "return [window.pwned, document.querySelectorAll('img, b').length, "
            "document.scripts.length]") == [None, 0, 1]
