#!/usr/bin/env python3
"""Reference sentence embeddings from sentence-transformers, for the BERT parity test.

Reads a JSON list of captions on stdin and a model directory as argv[1]; writes a JSON list
of embeddings (mean pooling + L2 normalisation, as all-MiniLM-L6-v2 is configured).
The pipeline is built explicitly (Transformer -> Pooling(mean) -> Normalize) so it does not
depend on optional files of the model directory.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sentence_transformers import SentenceTransformer, models  # noqa: E402


def main() -> None:
    model_dir = sys.argv[1]
    captions = json.load(sys.stdin)
    transformer = models.Transformer(model_dir, max_seq_length=256)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    embeddings = model.encode(captions, batch_size=16, convert_to_numpy=True)
    json.dump([[float(x) for x in row] for row in embeddings], sys.stdout)


if __name__ == "__main__":
    main()
