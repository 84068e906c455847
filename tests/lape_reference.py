"""An independent LAPE count for the real-model tests (SmolLM2, Gemma 3): SiLU(x) > 0
and GELU-tanh(x) > 0 exactly when x > 0, so counting gate_proj's outputs > 0 gives each
neuron's firing count from another module than the act_fn output that LAPE reads."""


def count_gate_positives(model, sink: list):
    """Forward hooks adding, per layer i, each neuron's count of positive gate outputs
    to ``sink[i]``; returns the hook handles (remove them after)."""
    def hook(i):
        def count(mod, args, out):
            sink[i] += (out > 0).reshape(-1, out.shape[-1]).sum(0).numpy()
        return count
    return [layer.mlp.gate_proj.register_forward_hook(hook(i))
            for i, layer in enumerate(model.model.layers)]
