"""Tiny random Grounding DINO and OWLv2 checkpoints (HF `transformers`), written to a folder so the
grounded labeler loads them by path exactly as it loads real weights. Nothing is downloaded: the
tokenizers' vocabularies are written here too."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

WORDS = [
    "car",
    "person",
    "road",
    "tree",
    "sky",
    "sidewalk",
    "pedestrian",
    "bowl",
    "plate",
    "food",
    "dining",
    "table",
]


def tiny_grounding_dino(folder: Path) -> Path:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            out_features=["stage2", "stage3", "stage4"],
            image_size=64,
            window_size=4,
        ),
        text_config=BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizer(str(folder / "vocab.txt")),
    )
    processor.save_pretrained(folder)
    return folder


def tiny_owlv2(folder: Path) -> Path:
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in [*string.ascii_lowercase, "."]:  # characters only: every word tokenises letter by letter
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=16
    )
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 16,
    }
    torch.manual_seed(0)
    Owlv2ForObjectDetection(
        Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    ).save_pretrained(folder)
    Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer
    ).save_pretrained(folder)
    return folder
