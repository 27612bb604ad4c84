"""Helpers shared by the library tests (importable by name, unlike conftest.py): tiny models, editors, data."""
from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from editor_core.data import EditRequest, tokenize_edits
from editor_core.gradients import token_factors
from editor_core.mend import MENDEditor
from editor_core.model import prepare_model

# Four blocks, so that the default (last three MLPs) leaves block 0 below the first edited block.
N_LAYERS = 4
# Two requests of different lengths, so that a batch of them has padding.
REQS = [EditRequest("The capital of France is", "Rome"),
        EditRequest("Who wrote the novel Dracula? The answer is", "Jane Austen")]


def build_llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return prepare_model(LlamaForCausalLM(cfg))


def build_gpt2(tokenizer) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=48, n_layer=N_LAYERS, n_head=4, n_positions=256, vocab_size=len(tokenizer),
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return prepare_model(GPT2LMHeadModel(cfg))


def identity_editor(model, **kw) -> MENDEditor:
    """A fresh editor: identity networks and no statistics, so its update is -alpha times the gradient."""
    return MENDEditor.for_model(model, **{"rank": 8, "precond_lambda": None, **kw}).eval()


def trained_like_editor(model, tokenizer, seed: int = 1, **kw) -> MENDEditor:
    """An editor whose networks are not the identity and whose normalization has statistics, as after training."""
    torch.manual_seed(seed)
    editor = MENDEditor.for_model(model, **{"rank": 8, "precond_lambda": None, **kw})
    with torch.no_grad():
        for net in editor.nets.values():
            for block in net.blocks:
                block.u.normal_(0, 0.3)
                block.bias.normal_(0, 0.1)
    reqs = [EditRequest("Lyon is a city in", "France"), EditRequest("Water boils at", "100 degrees"), *REQS]
    factors, _ = token_factors(model, editor.layers, tokenize_edits(tokenizer, reqs))
    editor.train()
    editor.transform(factors)  # fills the running statistics
    return editor.eval()


ZSRE = [
    {"subject": "Paris", "src": "What country is Paris in?", "pred": "France", "rephrase": "Paris is in which country?",
     "alt": "Italy", "answers": ["France"], "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare"},
    {"subject": "Nile", "src": "Which continent is the Nile on?", "pred": "Africa",
     "rephrase": "The Nile flows through which continent?", "alt": "Asia", "answers": ["Africa"],
     "loc": "nq question: what is the boiling point of water", "loc_ans": "100 degrees"},
    {"subject": "Mars", "src": "What colour is Mars?", "pred": "red", "rephrase": "Mars has which colour?",
     "alt": "blue", "answers": ["red"], "loc": "nq question: how many legs does a spider have", "loc_ans": "eight"},
    {"subject": "Void", "src": "What is the void?", "pred": "x", "rephrase": "The void is?", "alt": "",
     "answers": ["x"], "loc": "nq question: who", "loc_ans": "y"},  # empty new answer: must be skipped
]

COUNTERFACT = [
    {"case_id": 1, "requested_rewrite": {"prompt": "{}, which is owned by", "subject": "LinkedIn",
                                         "relation_id": "P127", "target_new": {"str": "Apple"},
                                         "target_true": {"str": "Microsoft"}},
     "paraphrase_prompts": ["LinkedIn is a company. LinkedIn is owned by"],
     "neighborhood_prompts": ["Skype is owned by", "GitHub is owned by"], "attribute_prompts": [],
     "generation_prompts": []},
    {"case_id": 2, "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                                         "relation_id": "P103", "target_new": {"str": "English"},
                                         "target_true": {"str": "French"}},
     "paraphrase_prompts": ["Danielle Darrieux spoke the language"],
     "neighborhood_prompts": ["The mother tongue of Jacques Chirac is"], "attribute_prompts": [],
     "generation_prompts": []},
]
