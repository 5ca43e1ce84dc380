"""The encoder's last layer computed for the one position the classification head reads.

`BertForSequenceClassification` classifies from the [CLS] token alone (its pooler reads position 0 of the last
layer's output), yet the stock last layer computes every position: the query, attention output and feed-forward
products of the other tokens are thrown away. In the last layer only the keys and values need every token, so
computing the rest for [CLS] alone cuts about 1/L of the encoder's products minus the keys and values (about 14%
of MiniLM-L6's) from training and evaluation, with the same logits and gradients up to float rounding.

Installed by swapping the class of the last layer's instance for a subclass whose forward takes the short path
(unlike a function stored on the instance, a class survives deep copies, and `print(model)` names it:
HeadTokenBertLayer); the weights, their names and the
saved adapter do not change, so a stock loader reads what a run saves. Whatever the short path does not cover
(head masks, caches, cross-attention; anything a caller passes beyond the hidden states and the mask) goes to the
stock forward, and so does a call that asks for every layer's attentions or hidden states. Otherwise the encoder's
last hidden state has the one position the classifier reads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Model types whose last encoder layer has BERT's modules (attention.self.query/key/value, attention.output,
# intermediate, output) and whose sequence classifier reads position 0 only (through BERT's pooler).
SUPPORTED_MODEL_TYPES = ("bert",)

# Keyword arguments transformers 5 hands down to every layer that the layer's computation does not read: the
# Trainer's loss normaliser (num_items_in_batch, for models whose forward takes loss arguments) and the output
# format (output_hidden_states is seen by _note_what_the_call_asks instead). Any other argument a call sets sends
# it to the stock forward.
IGNORED_KWARGS = ("num_items_in_batch", "return_dict", "output_hidden_states")

_subclasses: dict[type, type] = {}


def _is_unused(value) -> bool:
    return value is None or value is False or (isinstance(value, (tuple, list)) and not value)


def _takes_the_short_path(args, kwargs) -> bool:
    return all(_is_unused(a) for a in args) and all(
        _is_unused(v) for k, v in kwargs.items() if k not in IGNORED_KWARGS)


class _HeadTokenForward:
    """The short forward, mixed in front of the stock layer class."""

    _head_token_returns_tuple: bool  # transformers 4 layers return (hidden_states, ...), transformers 5 the tensor
    _head_token_stock_call: bool = False  # set per call by _note_what_the_call_asks

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        if self._head_token_stock_call or not _takes_the_short_path(args, kwargs):
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        attn = self.attention.self
        batch, length, _ = hidden_states.shape
        heads, size = attn.num_attention_heads, attn.attention_head_size
        first = hidden_states[:, :1]
        # the query of [CLS] alone, keys and values of every token (looked up at call time: peft replaces them)
        query = attn.query(first).view(batch, 1, heads, size).transpose(1, 2)
        key = attn.key(hidden_states).view(batch, length, heads, size).transpose(1, 2)
        value = attn.value(hidden_states).view(batch, length, heads, size).transpose(1, 2)
        if attention_mask is not None and attention_mask.dim() == 4:
            # (batch, 1, 1 or length, length), additive or boolean as transformers built it: the row of [CLS]
            attention_mask = attention_mask[:, :, :1, :]
            if attention_mask.is_floating_point() and attention_mask.dtype != query.dtype:
                attention_mask = attention_mask.to(query.dtype)  # under autocast the products run in bf16/fp16
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                 dropout_p=attn.dropout.p if self.training else 0.0)
        context = context.transpose(1, 2).reshape(batch, 1, heads * size)
        attention_output = self.attention.output(context, first)
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return (layer_output,) if self._head_token_returns_tuple else layer_output


def _transformers_model(model):
    """The transformers model inside a PeftModel, or `model` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model) -> str | None:
    """Why the short last layer does not apply to `model` (None when it does)."""
    model = _transformers_model(model)
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return f"{type(model).__name__} is not a sequence classifier reading [CLS]"
    if config.is_decoder or getattr(config, "add_cross_attention", False):
        return "a decoder configuration"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {config.position_embedding_type!r} (its attention adds relative positions)"
    if getattr(config, "_attn_implementation", "eager") not in ("eager", "sdpa"):
        return f"attention {config._attn_implementation!r}"
    return None


def last_layer(model):
    model = _transformers_model(model)
    return getattr(model, model.base_model_prefix).encoder.layer[-1]


def uses_head_token_only(model) -> bool:
    return unsupported_reason(model) is None and isinstance(last_layer(model), _HeadTokenForward)


def _note_what_the_call_asks(module, args, kwargs):
    """A pre-hook on the encoder's model: a call asking for every layer's attentions or hidden states gets the
    stock last layer (transformers 4 keeps output_hidden_states from the layers, so the layer cannot see it). It
    finds the layer at call time, so a deep copy of the model sets its own layer's flag."""
    module.encoder.layer[-1]._head_token_stock_call = any(
        kwargs.get(flag) if kwargs.get(flag) is not None else getattr(module.config, flag, False)
        for flag in ("output_attentions", "output_hidden_states"))


@torch.no_grad()
def _returns_tuple(layer) -> bool:
    """What this transformers version's layer returns, by running it on two positions of zeros."""
    norm = layer.attention.output.LayerNorm.weight  # never quantised, unlike the projections
    hidden = torch.zeros(1, 2, norm.shape[0], dtype=norm.dtype, device=norm.device)
    training = layer.training
    layer.eval()
    try:
        return isinstance(layer(hidden), tuple)
    finally:
        layer.train(training)


def compute_head_token_only(model) -> bool:
    """Make the last encoder layer of `model` (a transformers model or a PeftModel around one) compute only the
    position its classifier reads. Returns False, changing nothing, where the model is not one it knows."""
    if unsupported_reason(model) is not None:
        return False
    layer = last_layer(model)
    if isinstance(layer, _HeadTokenForward):
        return True
    stock = type(layer)
    returns_tuple = _returns_tuple(layer)
    if stock not in _subclasses:
        _subclasses[stock] = type(f"HeadToken{stock.__name__}", (_HeadTokenForward, stock), {})
    layer.__class__ = _subclasses[stock]
    layer._head_token_returns_tuple = returns_tuple
    base = _transformers_model(model)
    # on the encoder's model (BertModel), which its classifier calls through __call__, so hooks run
    getattr(base, base.base_model_prefix).register_forward_pre_hook(_note_what_the_call_asks, with_kwargs=True)
    return True
