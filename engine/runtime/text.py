"""Text prompts without torch: all-MiniLM-L6-v2 as ONNX (exported by trainers.text) and its own tokenizer.

"hairline crack" is matched to the dataset's defect classes by cosine similarity of sentence embeddings, so
an engineer can type what they look for in their own words.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.errors import ModelError
from engine.runtime.session import create_session

MODEL_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "text_encoder.json"


class TextEncoder:
    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        self.model_dir = Path(model_dir)
        for name in (MODEL_FILE, TOKENIZER_FILE, METADATA_FILE):
            if not (self.model_dir / name).is_file():
                raise ModelError(f"{self.model_dir / name}: missing (export the text encoder first: "
                                 "job kind export_text_encoder)")
        self.metadata = json.loads((self.model_dir / METADATA_FILE).read_text())
        self.max_length = int(self.metadata.get("max_length", 128))
        self.session, self.provider = create_session(self.model_dir / MODEL_FILE, device=device)

    @staticmethod
    def tokenize_with(tokenizer_path: Path, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_path))
        tok.enable_truncation(max_length)
        tok.enable_padding()
        encs = tok.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in encs], np.int64),
                "attention_mask": np.array([e.attention_mask for e in encs], np.int64),
                "token_type_ids": np.array([e.type_ids for e in encs], np.int64)}

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) L2-normalised embeddings."""
        feeds = self.tokenize_with(self.model_dir / TOKENIZER_FILE, texts, self.max_length)
        return self.session.run(None, feeds)[0]

    def match(self, query: str, names: list[str]) -> list[tuple[str, float]]:
        """The names ranked by cosine similarity to the query (underscores read as spaces)."""
        if not names or not query.strip():
            return []
        emb = self.embed([query.strip(), *[n.replace("_", " ") for n in names]])
        scores = emb[1:] @ emb[0]
        order = np.argsort(-scores)
        return [(names[i], float(scores[i])) for i in order]
