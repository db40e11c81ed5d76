"""Random-weight checkpoints in the official IndexTTS2 file formats and key names.

    python tools/make_checkpoints.py OUT [--size tiny|full] [--seed 0]

writes
    OUT/config.yaml                       official layout (gpt, semantic_codec, w2v_stat, ...)
    OUT/gpt.pth                           the six conditioning prefixes + unrelated extra keys
    OUT/wav2vec2bert_stats.pt             {"mean", "var"} float32 [H]
    OUT/bpe.model                         SentencePiece, ids 0/1/2 = <s>/</s>/<unk>
    OUT/w2v-bert-2.0/                     config.json, model.safetensors, preprocessor_config.json
    OUT/semantic_codec/model.safetensors  encoder, quantizer and decoder keys

`tiny` takes seconds and keeps every shape the trainer sees ([32, 1280] latents, 8192 codes);
`full` has the official dimensions (about 1.2 B parameters written, for benchmarks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess.models.codec import SemanticCodec, SemanticCodecConfig  # noqa: E402
from preprocess.models.unifiedvoice import ConditioningConfig, UnifiedVoiceConditioning  # noqa: E402

W2V = {
    # transformers' Wav2Vec2BertConfig defaults are the w2v-bert-2.0 architecture.
    "full": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=64, num_hidden_layers=18, num_attention_heads=4, intermediate_size=128),
}
CODEC = {
    "full": dict(codebook_size=8192, hidden_size=1024, codebook_dim=8, vocos_dim=384,
                 vocos_intermediate_dim=2048, vocos_num_layers=12),
    "tiny": dict(codebook_size=8192, hidden_size=64, codebook_dim=8, vocos_dim=32,
                 vocos_intermediate_dim=64, vocos_num_layers=12),
}
CONDITION = {
    "full": (dict(output_size=512, linear_units=2048, attention_heads=8, num_blocks=6),
             dict(output_size=512, linear_units=1024, attention_heads=4, num_blocks=4)),
    "tiny": (dict(output_size=32, linear_units=64, attention_heads=2, num_blocks=2),
             dict(output_size=32, linear_units=64, attention_heads=2, num_blocks=2)),
}
VOCAB = {"full": 12000, "tiny": 500}

# Training text for the tokenizer: several scripts, so every sample language has pieces.
TOKENIZER_TEXT = """\
The quick brown fox jumps over the lazy dog.
Author of the danger trail, Philip Steels, etc.
Not at this particular case, Tom, apologized Whittemore.
She sells sea shells by the sea shore on the second of March 2024.
Please call me at three thirty in the afternoon.
Bonjour tout le monde, comment allez-vous aujourd'hui?
Guten Morgen, wie geht es Ihnen heute?
今天天气很好，我们一起去公园散步吧。
这是一个用于测试的中文句子，包含数字一二三。
人工智能正在改变我们的生活方式。
こんにちは、今日はいい天気ですね。
私は毎朝コーヒーを飲みます。
안녕하세요, 반갑습니다.
오늘 날씨가 정말 좋네요.
"""


def gpt_section(size: str) -> dict:
    speaker, emotion = CONDITION[size]
    return {
        "model_dim": 1280, "max_mel_tokens": 1815, "max_text_tokens": 600, "heads": 20,
        "use_mel_codes_as_input": True, "mel_length_compression": 1024, "layers": 24,
        "number_text_tokens": VOCAB[size], "number_mel_codes": 8194, "start_mel_token": 8192,
        "stop_mel_token": 8193, "start_text_token": 0, "stop_text_token": 1,
        "train_solo_embeddings": False, "condition_type": "conformer_perceiver",
        "condition_module": {**speaker, "input_layer": "conv2d2", "perceiver_mult": 2},
        "emo_condition_module": {**emotion, "input_layer": "conv2d2", "perceiver_mult": 2},
    }


def write_w2v_bert(out: Path, size: str, seed: int) -> int:
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    torch.manual_seed(seed)
    config = Wav2Vec2BertConfig(**W2V[size])
    model = Wav2Vec2BertModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    SeamlessM4TFeatureExtractor(feature_size=80, num_mel_bins=80, sampling_rate=16000, stride=2,
                                padding_value=1.0).save_pretrained(out)
    return config.hidden_size


def write_stats(path: Path, width: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 1)
    mean = 0.1 * torch.randn(width, generator=g)
    var = 0.5 + torch.rand(width, generator=g)
    torch.save({"mean": mean, "var": var}, path)


def write_codec(path: Path, size: str, seed: int) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(seed + 2)
    config = SemanticCodecConfig(**CODEC[size])
    tensors = {k: v.contiguous() for k, v in SemanticCodec(config).state_dict().items()}
    g = torch.Generator().manual_seed(seed + 3)
    for key, shape in SemanticCodec.decoder_key_shapes(config).items():
        tensors[key] = 0.02 * torch.randn(shape, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def write_gpt(path: Path, size: str, width: int, seed: int) -> None:
    torch.manual_seed(seed + 4)
    config = ConditioningConfig.from_gpt_section(gpt_section(size), input_size=width)
    state = dict(UnifiedVoiceConditioning(config).state_dict())
    # A few keys of the parts preprocessing never loads, so loaders are tested on a real mix.
    state["text_embedding.weight"] = torch.randn(VOCAB[size] + 1, 1280) * 0.02
    state["mel_head.bias"] = torch.zeros(8194)
    torch.save(state, path)


def write_tokenizer(path: Path, size: str) -> None:
    import sentencepiece as spm

    from preprocess.text import TextNormalizer, normaliser_hint, split_cjk

    normalizer = TextNormalizer()
    lines = []
    for line in TOKENIZER_TEXT.splitlines():
        lang = "zh" if any("\u4e00" <= c <= "\u9fff" for c in line) else None
        lines.append(split_cjk(normalizer.normalize(line, normaliser_hint(lang))))
    text = path.with_suffix(".txt")
    text.write_text("\n".join(lines * 4) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(path.with_suffix("")), vocab_size=VOCAB[size],
        model_type="bpe", character_coverage=1.0, bos_id=0, eos_id=1, unk_id=2, pad_id=-1,
        hard_vocab_limit=False, byte_fallback=False, minloglevel=2)
    text.unlink()
    path.with_suffix(".vocab").unlink(missing_ok=True)


def make_checkpoints(out: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width = write_w2v_bert(out / "w2v-bert-2.0", size, seed)
    write_stats(out / "wav2vec2bert_stats.pt", width, seed)
    write_codec(out / "semantic_codec" / "model.safetensors", size, seed)
    write_gpt(out / "gpt.pth", size, width, seed)
    write_tokenizer(out / "bpe.model", size)
    config = {
        "dataset": {"bpe_model": "bpe.model", "sample_rate": 24000, "squeeze": False},
        "gpt": gpt_section(size),
        "semantic_codec": CODEC[size],
        "gpt_checkpoint": "gpt.pth",
        "w2v_stat": "wav2vec2bert_stats.pt",
        "version": 2.0,
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (out / "MADE_BY.json").write_text(json.dumps({"size": size, "seed": seed}) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = make_checkpoints(args.out, args.size, args.seed)
    print(f"wrote {args.size} random-weight checkpoints to {out}")


if __name__ == "__main__":
    main()
