"""TransformersVQA with tiny random ViLT and BLIP VQA models saved locally (nothing downloaded): each ranks the
answers a question allows, through the shared answering logic."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmsearch import plugins
from mmsearch.plugins.base import Answerer, FeatureAnswerer, ProductFacts
from tests.plugins.builders import BERT_VOCAB, MINILM_DIR

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
LABELS = ["yes", "no", "red", "green", "blue"]


def _tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(MINILM_DIR))


def save_tiny_vilt(folder, seed=0):
    import torch
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessor, ViltProcessor

    torch.manual_seed(seed)
    config = ViltConfig(vocab_size=BERT_VOCAB, image_size=32, patch_size=16, max_image_length=8,
                        max_position_embeddings=40, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)}, **TINY)
    ViltForQuestionAnswering(config).eval().save_pretrained(folder)
    ViltProcessor(ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=16), _tokenizer()).save_pretrained(folder)
    return folder


def save_tiny_blip_vqa(folder, seed=0):
    import torch
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    torch.manual_seed(seed)
    tok = _tokenizer()
    tok.add_special_tokens({"bos_token": "[DEC]"})
    config = BlipConfig(text_config={**TINY, "vocab_size": BERT_VOCAB + 2, "max_position_embeddings": 64,
                                     "bos_token_id": BERT_VOCAB, "sep_token_id": 102, "pad_token_id": 0},
                        vision_config={**TINY, "image_size": 32, "patch_size": 16})
    BlipForQuestionAnswering(config).eval().save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tok).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vqa_models(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vqa")
    vocab = root / "vocabulary.json"
    vocab.write_text(json.dumps({"colour": {"Red": 3, "Green": 2, "Blue": 1}}))
    made = {"vilt": save_tiny_vilt(root / "vilt"), "blip": save_tiny_blip_vqa(root / "blip"), "vocabulary": vocab}
    yield made
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["vilt", "blip"])
def test_tiny_vqa_models_answer_through_the_plugin(vqa_models, settings, kind):
    settings.MMSEARCH_MODELS = {**settings.MMSEARCH_MODELS, "answerer": {
        "BACKEND": "mmsearch.plugins.transformers_vqa.TransformersVQA",
        "OPTIONS": {"model": str(vqa_models[kind]), "vocabulary": str(vqa_models["vocabulary"]), "threshold": 0.0,
                    "device": "cpu"}}}
    plugins.reset()
    vqa = plugins.get_model("answerer")
    assert isinstance(vqa, Answerer) and isinstance(vqa, FeatureAnswerer)
    assert vqa.model_key.startswith("transformers-vqa:local:")
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    facts = ProductFacts("x", "A thing")
    ans = vqa.answer("what colour is it?", facts, [image])
    assert ans.kind == "colour" and ans.text in ("Red", "Green", "Blue") and 0 < ans.confidence <= 1
    # the ranking is over the candidates only, and sums to one
    routed, parsed = vqa.parse("is it red or blue?")
    probs = vqa.visual_probabilities("is it red or blue?", parsed, vqa.image_features([image]))
    assert parsed.candidates == ("Red", "Blue") and probs.shape == (2,) and np.isclose(probs.sum(), 1.0)
    assert vqa.answer("is it green?", facts, [image]).text in ("Yes", "No")
    # the same model, the same answer through the cached-features path
    assert vqa.answer_features("what colour is it?", facts, vqa.image_features([image])) == ans
    # data first: the product's own colour answers, the model only checks it
    assert vqa.answer("what colour is it?", ProductFacts("y", "B", attributes={"colour": "Green"}), [image]).text \
        .startswith("Green")
    plugins.reset()


def test_bad_options_are_clear_errors(vqa_models, tmp_path):
    from mmsearch.plugins.transformers_vqa import TransformersVQA

    with pytest.raises(FileNotFoundError, match="does not exist"):
        TransformersVQA(model=str(tmp_path / "none"), vocabulary=str(vqa_models["vocabulary"]))
    with pytest.raises(FileNotFoundError, match="neither an answerer folder nor a JSON file"):
        TransformersVQA(model=str(vqa_models["vilt"]), vocabulary=str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="temperature"):
        TransformersVQA(model=str(vqa_models["vilt"]), vocabulary=str(vqa_models["vocabulary"]), temperature=0)
    hub = TransformersVQA(model="dandelin/vilt-b32-finetuned-vqa", vocabulary=str(vqa_models["vocabulary"]))
    assert hub.model_key == "transformers-vqa:dandelin/vilt-b32-finetuned-vqa" and not hub.loaded
