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
last hidden state has the one position the classifier reads.

The same layer computation, at every position, serves the other layers while training draws 16-bit dropout masks
(dropout_masks.py installs it with them): SDPA would drop the attention probabilities inside itself, in its unfused
math kernel with torch's bernoulli_ masks, while here they go through the attention's own dropout module, whose
masks are 16-bit (`_attention`). Evaluation, GPUs and torch's masks run the stock layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dropout_masks import SixteenBitMaskDropout

# Model types whose last encoder layer has BERT's modules (attention.self.query/key/value, attention.output,
# intermediate, output) and whose sequence classifier reads position 0 only (through BERT's pooler).
SUPPORTED_MODEL_TYPES = ("bert",)

# Keyword arguments transformers 5 hands down to every layer that the layer's computation does not read: the
# Trainer's loss normaliser (num_items_in_batch, for models whose forward takes loss arguments) and the output
# format (output_hidden_states is seen by _note_what_the_call_asks instead). Any other argument a call sets sends
# it to the stock forward.
IGNORED_KWARGS = ("num_items_in_batch", "return_dict", "output_hidden_states")

_subclasses: dict[tuple[type, type], type] = {}  # (mixin, stock layer class) -> the class swapped in


def _is_unused(value) -> bool:
    return value is None or value is False or (isinstance(value, (tuple, list)) and not value)


def _takes_the_short_path(args, kwargs) -> bool:
    return all(_is_unused(a) for a in args) and all(
        _is_unused(v) for k, v in kwargs.items() if k not in IGNORED_KWARGS)


def _attention(attn, query, key, value, attention_mask):
    """BERT's attention of `query` over `key` and `value` ((batch, heads, positions, size) each). SDPA, unless the
    attention's dropout module draws 16-bit masks for this call (dropout_masks.py): then the probabilities are
    computed here and dropped through that module, where SDPA would drop them inside its unfused math kernel with
    torch's masks (1.3 ms against 2.5 ms for one MiniLM layer's forward and backward at 28 tokens;
    benchmarks/attention_kernels.py)."""
    dropout = attn.dropout
    if isinstance(dropout, SixteenBitMaskDropout) and dropout.draws_masks_for(query):
        scores = torch.matmul(query, key.transpose(-1, -2)) * query.shape[-1] ** -0.5  # SDPA's default scale
        if attention_mask is not None and attention_mask.dtype == torch.bool:  # True: attend (SDPA's convention)
            scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)  # in place: nothing saved it
        elif attention_mask is not None:
            scores = scores + attention_mask  # additive, as transformers 4 builds it
        return torch.matmul(dropout(scores.softmax(-1)), value)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                          dropout_p=dropout.p if dropout.training else 0.0)


class _BertLayerForward:
    """A BERT layer's computation through the layer's own modules (looked up at call time: peft replaces the
    projections), mixed in front of the stock layer class; a call it does not cover runs the stock forward."""

    _bert_layer_returns_tuple: bool  # transformers 4 layers return (hidden_states, ...), transformers 5 the tensor
    _bert_layer_stock_call: bool = False  # set per call by _note_what_the_call_asks

    def _covers(self, args, kwargs) -> bool:
        """Whether this call (its arguments beyond the hidden states and the mask) is one `_layer` computes."""
        return not self._bert_layer_stock_call and _takes_the_short_path(args, kwargs)

    def _layer(self, hidden_states, attention_mask, head_token_only: bool):
        attn = self.attention.self
        batch, length, _ = hidden_states.shape
        heads, size = attn.num_attention_heads, attn.attention_head_size
        queried = hidden_states[:, :1] if head_token_only else hidden_states
        positions = queried.shape[1]
        query = attn.query(queried).view(batch, positions, heads, size).transpose(1, 2)
        key = attn.key(hidden_states).view(batch, length, heads, size).transpose(1, 2)
        value = attn.value(hidden_states).view(batch, length, heads, size).transpose(1, 2)
        if attention_mask is not None and attention_mask.dim() == 4:
            # (batch, 1, 1 or length, length), additive or boolean as transformers built it
            if head_token_only:
                attention_mask = attention_mask[:, :, :1, :]  # the row of [CLS]
            if attention_mask.is_floating_point() and attention_mask.dtype != query.dtype:
                attention_mask = attention_mask.to(query.dtype)  # under autocast the products run in bf16/fp16
        context = _attention(attn, query, key, value, attention_mask)
        context = context.transpose(1, 2).reshape(batch, positions, heads * size)
        attention_output = self.attention.output(context, queried)
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return (layer_output,) if self._bert_layer_returns_tuple else layer_output


class _HeadTokenForward(_BertLayerForward):
    """The last layer, computed for [CLS] alone: the one position its classifier reads."""

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        if not self._covers(args, kwargs):
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        return self._layer(hidden_states, attention_mask, head_token_only=True)


class _AttentionDropoutForward(_BertLayerForward):
    """Any other layer: every position, computed here only while its attention dropout draws 16-bit masks."""

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        dropout = self.attention.self.dropout
        if not (isinstance(dropout, SixteenBitMaskDropout) and dropout.draws_masks_for(hidden_states)
                and self._covers(args, kwargs)):
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        return self._layer(hidden_states, attention_mask, head_token_only=False)


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
    stock layers (transformers 4 keeps output_hidden_states from the layers, so a layer cannot see it). It finds
    the layers at call time, so a deep copy of the model sets its own layers' flags."""
    stock_call = any(kwargs.get(flag) if kwargs.get(flag) is not None else getattr(module.config, flag, False)
                     for flag in ("output_attentions", "output_hidden_states"))
    for layer in module.encoder.layer:
        if isinstance(layer, _BertLayerForward):
            layer._bert_layer_stock_call = stock_call


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


def _swap(layer, mixin: type) -> None:
    stock = next(c for c in type(layer).__mro__ if not issubclass(c, _BertLayerForward))  # a swapped layer's stock
    returns_tuple = _returns_tuple(layer)
    if (mixin, stock) not in _subclasses:
        name = {_HeadTokenForward: "HeadToken", _AttentionDropoutForward: "AttentionDropout"}[mixin]
        _subclasses[mixin, stock] = type(f"{name}{stock.__name__}", (mixin, stock), {})
    layer.__class__ = _subclasses[mixin, stock]
    layer._bert_layer_returns_tuple = returns_tuple


def _hook_the_encoder(model) -> None:
    """On the encoder's model (BertModel), which its classifier calls through __call__, so hooks run; once."""
    base = _transformers_model(model)
    encoder_model = getattr(base, base.base_model_prefix)
    if not getattr(encoder_model, "_bert_layers_hooked", False):
        encoder_model.register_forward_pre_hook(_note_what_the_call_asks, with_kwargs=True)
        encoder_model._bert_layers_hooked = True


def compute_head_token_only(model) -> bool:
    """Make the last encoder layer of `model` (a transformers model or a PeftModel around one) compute only the
    position its classifier reads. Returns False, changing nothing, where the model is not one it knows."""
    if unsupported_reason(model) is not None:
        return False
    layer = last_layer(model)
    if not isinstance(layer, _HeadTokenForward):
        _swap(layer, _HeadTokenForward)
        _hook_the_encoder(model)
    return True


def draw_attention_dropout_through_the_module(model) -> int:
    """Give every encoder layer of `model` that is not the short last one a forward that, while its attention
    dropout draws 16-bit masks (dropout_masks.py: training on a CPU), computes the layer here and drops the
    attention probabilities through that module; any other call (evaluation, GPUs, torch's masks) runs the stock
    forward. The short last layer drops them the same way (_attention). Returns how many layers apply the
    attention dropout through the module; 0, changing nothing, where the model is not one it knows."""
    if getattr(_transformers_model(model), "config", None) is None or unsupported_reason(model) is not None:
        return 0  # not a transformers model (e.g. a dropout alone), or not one it knows
    base = _transformers_model(model)
    layers = getattr(base, base.base_model_prefix).encoder.layer
    for layer in layers:
        if not isinstance(layer, _BertLayerForward):
            _swap(layer, _AttentionDropoutForward)
    _hook_the_encoder(model)
    return sum(isinstance(layer.attention.self.dropout, SixteenBitMaskDropout) for layer in layers)
