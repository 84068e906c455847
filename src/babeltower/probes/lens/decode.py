"""The logit lens itself: decode a layer's hidden state through the model's own final norm and
unembedding (full vocabulary, or gathered rows), with soft-capping where the config has it;
the measure names (package docstring)."""

from __future__ import annotations

from babeltower.architectures import final_norm, unembedding
from babeltower.errors import BabelError


#: measures that need the full-vocabulary distribution at every layer (argmax, probabilities)
FULL_VOCAB_MEASURES = ("top1_primary", "top1_new", "top1_target", "p_primary", "p_new")


#: measures that are logit differences at one position: a few unembedding rows suffice
PAIRWISE_MEASURES = ("logp_diff", "prefers_new", "primary_vs_control",
                     "prefers_new_vs_unrelated", "other_new_prefers",
                     "logp_new_vs_unrelated", "logp_other_new_vs_primary",
                     # control A with the unrelated primary tokens drawn from pairs of the
                     # same kind only (``CheckedItem.control_kind_ids``), and the margin
                     # analogue of specific_new
                     "primary_vs_control_kind", "prefers_new_vs_unrelated_kind",
                     "logp_new_vs_unrelated_kind", "new_vs_other_new")



MEASURES = FULL_VOCAB_MEASURES + PAIRWISE_MEASURES


#: per-prompt measures at the output layer scored with whole identifiers ("full-sequence")
SEQUENCE_MEASURES = ("seq_logp_diff", "seq_prefers_new", "seq_logp_target")



VOCAB_MODES = ("full", "gathered")



def position_ids_for(attention_mask):
    """Positions that ignore padding on either side (0 for the first real token)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)



def last_positions(attention_mask):
    """Index of the last real token of every row, for left or right padding."""
    import torch

    idx = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (idx + 1)).argmax(dim=1)



class LogitLens:
    """Decode every layer's hidden state through the model's own final norm + unembedding."""

    def __init__(self, model):
        self.model = model
        self.norm = final_norm(model)
        self.unembed = unembedding(model)
        # Gemma 2/3 configs may squash the output logits (cap * tanh(logits / cap)); the
        # lens applies the same to every layer so its last layer is the model's logits
        # (None for Gemma 3 270M and every other architecture in the table)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.n_layers = int(model.config.num_hidden_layers)
        self.decoder = model.base_model

    def hidden_states(self, input_ids, attention_mask, position_ids=None):
        """Every layer's hidden states at every position: a tuple of n_layers + 1 tensors
        (batch, seq, hidden), the last one already through the final norm (HF). They are
        inference tensors (read them, copy them with ``.clone()`` to modify in place).
        ``attention_mask`` is a 2D padding mask, or a 4D additive mask (a prefix tree's,
        see ``prefix_tree``; for decoders with sliding-window layers a dict of them per
        layer type, ``prefix_tree.tree_inputs``) with its ``position_ids``."""
        import torch

        if position_ids is None:
            if isinstance(attention_mask, dict) or attention_mask.dim() != 2:
                raise BabelError("a 4D attention mask needs its position_ids")
            position_ids = position_ids_for(attention_mask)

        # inference mode, not just no_grad: no autograd bookkeeping (version counters,
        # view tracking) on any tensor of the forward - 5-9% of a SmolLM2 forward on CPU
        with torch.inference_mode():
            # the decoder alone: the LM head over every position is the costliest part of a
            # forward on short prompts, and the lens unembeds the positions it reads itself
            out = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, output_hidden_states=True,
                               use_cache=False)
        hs = out.hidden_states
        if len(hs) != self.n_layers + 1:
            raise BabelError(f"model returned {len(hs)} hidden states for {self.n_layers} layers")
        return hs

    def layer_states(self, input_ids, attention_mask=None, positions=None):
        """Hidden states at ``positions`` for every layer: (n_layers + 1, batch, hidden)."""
        import torch

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if positions is None:
            positions = last_positions(attention_mask)
        hs = self.hidden_states(input_ids, attention_mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return torch.stack([h[rows, positions] for h in hs])

    def normed(self, states):
        """The final norm applied to every layer's state but the last (already normed)."""
        import torch

        with torch.inference_mode():
            return torch.cat([self.norm(states[:-1]), states[-1:]], dim=0)

    def decode_rows(self, states, token_ids):
        """Logits of ``token_ids`` only, for stacked states (n_layers + 1, ..., hidden):
        the normed states times the gathered unembedding rows W_U[token_ids] (+ bias), so a
        pairwise measure costs len(token_ids) dot products per state instead of the vocabulary.
        Equal to ``decode(states)[..., token_ids]`` (tested to 1e-4)."""
        import torch

        idx = torch.as_tensor(token_ids, dtype=torch.long, device=states.device)
        weight = getattr(self.unembed, "weight", None)
        if not isinstance(self.unembed, torch.nn.Linear) or weight is None:
            return self.decode(states)[..., idx]   # an unusual head: take the exact path
        with torch.inference_mode():
            out = self.normed(states) @ weight[idx].T
            if self.unembed.bias is not None:
                out = out + self.unembed.bias[idx]
            return self.capped(out)

    def capped(self, logits):
        """The model's final-logit soft-capping, elementwise (so it commutes with taking
        rows); the logits unchanged where the config sets none."""
        import torch

        if not self.softcap:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    def logits(self, normed_states):
        """Unembedding (+ soft-capping) of states that already went through the final norm."""
        import torch

        with torch.inference_mode():
            return self.capped(self.unembed(normed_states))

    def decode(self, states):
        """Logits for stacked states (n_layers + 1, ...): the norm is applied to every layer
        but the last, whose HF hidden state already went through the final norm."""
        return self.logits(self.normed(states))

    def layer_logits(self, input_ids, attention_mask=None, positions=None):
        """(n_layers + 1, batch, vocab) logits at ``positions`` (default: last real token)."""
        return self.decode(self.layer_states(input_ids, attention_mask, positions))
