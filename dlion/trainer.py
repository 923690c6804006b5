"""The TensorFlow side of a peer: flat float32 gradients in, flat parameters out.

Everything else in dlion works on flat numpy vectors, so each public call here is one tf.function with a
None batch dimension (no retrace when batch sizes change) that flattens or splits one buffer in a fixed
variable order.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

from dlion import optimizers
from dlion.models import build_model

OPTIMIZERS = tuple(optimizers.OPTIMIZERS)  # Keras optimizers by name


def configure_threads(intra: int) -> None:
    """Size TF's thread pools (intra-op `intra`, inter-op 1); must run before the first TF op.

    TF cannot change them once initialised: a repeated call with the same values is accepted, any other raises.
    """
    if intra < 1:
        raise ValueError(f"intra-op threads must be >= 1, got {intra}")
    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(intra)
        threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        current = (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads())
        if current != (intra, 1):
            raise


@keras.saving.register_keras_serializable(package="dlion")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then the rate times `factor` every `every` steps
    (`every` None: constant). Keras has no step decay with warmup; CosineDecay covers the cosine."""

    def __init__(self, learning_rate, warmup_steps=0, every=None, factor=1.0):
        super().__init__()
        self.learning_rate, self.warmup_steps, self.every, self.factor = learning_rate, warmup_steps, every, factor

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rate = keras.ops.convert_to_tensor(self.learning_rate, "float32")
        if self.every:
            after = keras.ops.maximum(step - self.warmup_steps, 0.0)
            rate = rate * keras.ops.power(keras.ops.convert_to_tensor(self.factor, "float32"),
                                          keras.ops.floor(after / self.every))
        if self.warmup_steps:
            rate = keras.ops.where(step < self.warmup_steps, self.learning_rate * step / self.warmup_steps, rate)
        return rate

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps, "every": self.every,
                "factor": self.factor}


def _learning_rate(learning_rate, schedule):
    """The optimizer's learning rate: a float, or a Keras schedule over its iterations (`optimizers.LRSchedule`)."""
    learning_rate = float(learning_rate)
    if schedule is None or (schedule.kind == "constant" and not schedule.warmup_steps):
        return learning_rate
    if schedule.kind == "cosine":
        warm = schedule.warmup_steps > 0
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warm else learning_rate, schedule.decay_steps, alpha=schedule.final_fraction,
            warmup_target=learning_rate if warm else None, warmup_steps=schedule.warmup_steps)
    every = schedule.every if schedule.kind == "step" else None
    return WarmupStepDecay(learning_rate, schedule.warmup_steps, every, schedule.factor if every else 1.0)


def _make_optimizer(name, learning_rate, momentum, params=None, schedule=None):
    """A Keras optimizer by name (its class's in lower case: `optimizers.OPTIMIZERS`) with keyword arguments `params`
    (checked as the config checks them; ValueError naming the key otherwise), `momentum` for sgd, and the
    learning-rate schedule."""
    try:
        name = optimizers.parse_name(name)
    except optimizers.Refused as exc:
        raise ValueError(f"optimizer {name!r}: {exc.expected}") from None
    except ValueError:
        raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(optimizers.OPTIMIZERS)}") from None
    params = dict(params or {})
    optimizers.check_params(name, params)
    classes = {key.lower(): cls for key, cls in vars(keras.optimizers).items()
               if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer)}
    return classes[name](learning_rate=_learning_rate(learning_rate, schedule),
                         **optimizers.keyword_arguments(name, params, momentum))


def classifier_parts(model: keras.Model) -> tuple[keras.layers.Dense, keras.Model]:
    """(last layer, body) of a model whose last layer the classifier refit can retrain (`dlion.classifier`): a Dense
    layer with a bias and a linear or softmax activation, on a graph that can be cut before it (the body: the model
    up to that layer's input). ValueError saying what is missing otherwise."""
    last = model.layers[-1] if model.layers else None
    if not (isinstance(last, keras.layers.Dense) and last.use_bias
            and last.activation in (keras.activations.linear, keras.activations.softmax)):
        raise ValueError(f"the classifier refit needs a model whose last layer is a Dense layer with a bias and no "
                         f"activation (or a softmax); model {model.name!r} ends in "
                         f"{type(last).__name__ if last else 'no layer'}")
    try:
        return last, keras.Model(model.inputs, last.input)
    except (AttributeError, ValueError, TypeError) as exc:
        raise ValueError(f"the classifier refit needs a functional or sequential model (it takes the features before "
                         f"the last layer): {exc}") from None


_ALIGN = 64  # bytes; TF kernels assume buffers at least this aligned


class _Input:
    """Feeds numpy arrays to one tf.function argument: checks the shape, stages the data in a reused aligned
    buffer and hands that to TF without a copy (DLPack).

    Converting a fresh numpy array makes TF allocate, copy, page-fault and free a new buffer on every call; a
    memcpy into a warm buffer is cheaper. The tensor is valid only until the next call: the functions here
    consume their inputs synchronously and never return them.
    """

    def __init__(self, spec: tf.TensorSpec, scale_uint8: bool = False):
        """`scale_uint8`: uint8 arrays are images of 0-255, staged as float32 in [0, 1]."""
        self.spec = spec
        self._dtype = np.dtype(spec.dtype.as_numpy_dtype)
        self._buf = np.empty(0, self._dtype)
        self._scale_uint8 = scale_uint8

    def __call__(self, array) -> tf.Tensor:
        array = np.asarray(array)
        if not self.spec.shape.is_compatible_with(array.shape):
            raise ValueError(f"{self.spec.name}: expected shape {self.spec.shape}, got {array.shape}")
        if array.size > self._buf.size:
            nbytes = array.size * self._dtype.itemsize
            raw = np.empty(nbytes + _ALIGN, np.uint8)
            start = -raw.ctypes.data % _ALIGN
            self._buf = raw[start:start + nbytes].view(self._dtype)
        view = self._buf[:array.size].reshape(array.shape)
        np.copyto(view, array, casting="same_kind")
        if self._scale_uint8 and array.dtype == np.uint8:
            np.divide(view, np.float32(255), out=view)
        return tf.experimental.dlpack.from_dlpack(view.__dlpack__())


def _flat(tensors):
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


class Trainer:
    """A Keras model plus optimizer driven through flat float32 vectors.

    `optimizer` is a Keras optimizer's name (dlion.optimizers.OPTIMIZERS), `optimizer_params` its keyword
    arguments, `momentum` sgd's (0 = plain SGD), `lr_schedule` a `dlion.optimizers.LRSchedule` over the optimizer's
    iterations (None: constant `learning_rate`); `loss_from_logits` False takes the model's outputs as probabilities
    (a final softmax). Parameters ("state") are the trainable variables followed by the non-trainable ones
    (BatchNorm statistics); gradients cover the trainable ones only. Not thread-safe: one thread drives a trainer.
    """

    def __init__(self, model="cnn", optimizer="adam", learning_rate=1e-3, seed=0, input_shape=(28, 28, 1),
                 num_classes=10, momentum=0.9, label_prior=None, optimizer_params=None, lr_schedule=None,
                 loss_from_logits=True, trace_at_init=True):
        """`label_prior` (class frequencies of this peer's data, or None): train with logit adjustment, the training
        logits shifted by log(prior), so that the raw logits learn class scores as if the classes were balanced
        (a skewed peer's model then does not favour its own classes; evaluation uses the raw logits).
        `trace_at_init` False traces each function at its first call instead: a trainer built in a tf.distribute
        strategy's scope cannot trace its gradients outside a replica context (`replica_step`)."""
        self.model = build_model(model, input_shape, num_classes, seed, from_logits=loss_from_logits)
        self._from_logits = bool(loss_from_logits)
        self._num_classes = num_classes
        self._logit_shift = tf.Variable(tf.zeros([num_classes]), trainable=False, name="logit_shift")
        self.set_label_prior(label_prior)
        self.optimizer = _make_optimizer(optimizer, learning_rate, momentum, optimizer_params, lr_schedule)
        self._trainable = list(self.model.trainable_variables)
        self._state = self._trainable + list(self.model.non_trainable_variables)
        # Created here, not on the first apply inside a tf.function.
        self.optimizer.build(self._trainable)
        self._sizes = [int(np.prod(v.shape)) for v in self._state]
        self.num_params = sum(self._sizes[:len(self._trainable)])
        self.num_state = sum(self._sizes)
        self._x = _Input(tf.TensorSpec([None, *input_shape], tf.float32, name="x"), scale_uint8=True)
        self._y = _Input(tf.TensorSpec([None], tf.int32, name="y"))
        self._grads_in = _Input(tf.TensorSpec([self.num_params], tf.float32, name="flat_grads"))
        self._params_in = _Input(tf.TensorSpec([self.num_state], tf.float32, name="flat_params"))
        self._functions = []

        def compile_(fn, inputs, **kwargs):
            # Traced once, now; the concrete function is called directly, skipping tf.function's per-call
            # argument binding (~60 us, measurable against a ~10 ms step). _Input does the shape checks.
            f = tf.function(fn, input_signature=[i.spec for i in inputs], **kwargs)
            self._functions.append(f)
            return f.get_concrete_function() if trace_at_init else f

        # XLA fuses the split and the per-variable optimizer ops into a few loops, ~2x faster than the plain graph;
        # this matters because, unlike in a fused step, the update cannot overlap with backprop. The rest stays
        # out of XLA: its CPU convolutions are ~2x slower than oneDNN's here.
        self._update = tf.function(lambda grads: self.optimizer.apply(grads, self._trainable), jit_compile=True)
        self._compile = compile_
        batch = [self._x, self._y]
        self._gradients = compile_(self._gradients_fn, batch)
        self._eval = compile_(self._eval_fn, batch)
        self._apply = compile_(self._apply_fn, [self._grads_in], jit_compile=True)  # the split fuses in too
        self._set = compile_(self._set_fn, [self._params_in])
        self._get = compile_(lambda: _flat(self._state), [])

    def set_label_prior(self, label_prior) -> None:
        """Train with logit adjustment for these class frequencies from now on (None: without)."""
        if label_prior is None:
            self._logit_shift.assign(tf.zeros([self._num_classes]))
            return
        prior = np.asarray(label_prior, np.float64)
        if prior.shape != (self._num_classes,) or not (prior > 0).all():
            raise ValueError(f"label_prior must be {self._num_classes} positive frequencies, got {label_prior!r}")
        self._logit_shift.assign(np.log(prior / prior.sum()).astype(np.float32))

    # --- graph bodies -------------------------------------------------------------------------------------------
    def _logits(self, outputs):
        """The model's outputs as logits: as they are, or for probabilities their logs, kept epsilon (1e-7) away
        from 0 and 1 as Keras's crossentropy keeps them (a softmax's 0 would give an infinite loss)."""
        if self._from_logits:
            return outputs
        eps = keras.config.epsilon()
        return tf.math.log(tf.clip_by_value(outputs, eps, 1 - eps))

    def _loss(self, x, y):
        logits = self._logits(self.model(x, training=True))
        logits = logits + self._logit_shift  # zero without a label prior
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        if self.model.losses:  # regularisers of import-path models
            loss += tf.add_n(self.model.losses)
        return loss

    def _gradients_fn(self, x, y):
        with tf.GradientTape() as tape:
            loss = self._loss(x, y)
        grads = tape.gradient(loss, self._trainable)
        return loss, _flat([tf.zeros_like(v) if g is None else g for g, v in zip(grads, self._trainable)])

    def _split(self, flat, variables):
        parts = tf.split(flat, self._sizes[:len(variables)])
        return [tf.reshape(p, v.shape) for p, v in zip(parts, variables)]

    def _apply_fn(self, flat_grads):
        self._update(self._split(flat_grads, self._trainable))

    def _set_fn(self, flat):
        for v, value in zip(self._state, self._split(flat, self._state)):
            v.assign(value)

    def _eval_fn(self, x, y):
        outputs = self.model(x, training=False)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=self._logits(outputs)))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(outputs, axis=1, output_type=tf.int32), y), tf.int32))
        return loss, correct

    # --- public API ---------------------------------------------------------------------------------------------
    def stage(self, x, y):
        """A batch as the functions here take it: checked, staged as tensors (uint8 images scaled to [0, 1])."""
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need a non-empty batch with one label per image, got {len(x)} images, "
                             f"{len(y)} labels")
        return self._x(x), self._y(y)

    def gradients(self, x, y) -> tuple[float, np.ndarray]:
        """Mean loss and the flat float32 gradient [num_params] of one batch; does not touch the weights
        (BatchNorm statistics do advance, as in any training-mode forward pass)."""
        loss, grads = self._gradients(*self.stage(x, y))
        return float(loss), grads.numpy()

    def apply(self, flat_grads) -> None:
        """One optimizer step with an (exchanged, averaged) flat gradient."""
        self._apply(self._grads_in(flat_grads))

    def fused_step(self, xla_update: bool = False):
        """A plain fused training step on this model and optimizer, `step(x, y) -> loss`: forward, backward and
        `optimizer.apply` in one graph, as an idiomatic TF loop writes it (the baseline of
        `scripts/bench_overhead.py`); `xla_update` uses the pipeline's XLA-compiled update instead. Traced when asked
        for, so peers, which never use it, do not pay for it."""
        def update(grads):
            if xla_update:
                self._update(grads)
            else:
                self.optimizer.apply(grads, self._trainable)

        def step_fn(x, y):
            with tf.GradientTape() as tape:
                loss = self._loss(x, y)
            update(tape.gradient(loss, self._trainable))
            return loss

        step = self._compile(step_fn, [self._x, self._y])
        return lambda x, y: float(step(*self.stage(x, y)))

    def replica_step(self, replicas: int):
        """The two halves of a synchronous data-parallel step, for a trainer built in a tf.distribute strategy's scope
        (with `trace_at_init` False), each to run in a replica context (`strategy.run`; scripts/anchor_mwms.py):
        `gradients(x, y) -> (loss, flat gradient)` of this replica's staged batch, and `apply(flat)`, the optimizer
        step on flat / `replicas`. The optimizer all-reduces (sums) the replicas' gradients before it steps: with
        equal batches, the step of the global batch's mean gradient. Apart, so that the compute can be paced alone."""
        def apply(flat):
            self.optimizer.apply(self._split(flat / replicas, self._trainable), self._trainable)
        return self._gradients_fn, apply

    def optimizer_state(self) -> list[np.ndarray]:
        """The optimizer's variables (its step count, moments, ...), as arrays, for a checkpoint."""
        return [np.array(v.numpy()) for v in self.optimizer.variables]

    def set_optimizer_state(self, arrays) -> None:
        """Restore what `optimizer_state` gave, on a trainer of the same model and optimizer."""
        variables = self.optimizer.variables
        if len(arrays) != len(variables) or any(tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, variables)):
            raise ValueError("the checkpoint's optimizer state does not fit this model and optimizer")
        for v, a in zip(variables, arrays):
            v.assign(a)

    def optimizer_vector(self) -> np.ndarray:
        """The optimizer's variables as one float32 vector: what a rejoining peer continues with (and what a
        simulation swaps between its peers). One traced call, not one per variable."""
        return self._optimizer_io()[0]().numpy()

    def set_optimizer_vector(self, flat) -> None:
        """Restore what `optimizer_vector` gave, on a trainer of the same model and optimizer (ValueError if not)."""
        _, put, staged = self._optimizer_io()
        flat = np.asarray(flat)
        if flat.shape != tuple(staged.spec.shape):
            raise ValueError(f"an optimizer state of {flat.size} values does not fit this model and optimizer")
        put(staged(flat))

    def optimizer_scalars(self) -> np.ndarray:
        """Where `optimizer_vector` holds the optimizer's scalars (its step count, its learning rate): values that a
        rounding encoding would corrupt, so a sender sends them exactly, unlike the moments."""
        self._optimizer_io()
        return self._optimizer_scalars

    def _optimizer_io(self):
        """(get() -> flat float32 tensor, put(flat), its `_Input`) over the optimizer's variables, traced at first
        use."""
        if getattr(self, "_optimizer_fns", None) is None:
            variables = list(self.optimizer.variables)
            sizes = [int(np.prod(v.shape)) for v in variables]
            starts = np.cumsum([0] + sizes)
            self._optimizer_scalars = starts[:-1][[len(v.shape) == 0 for v in variables]].astype(np.int64)

            def get():
                return tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables]
                                 or [tf.zeros([0], tf.float32)], axis=0)

            def put(flat):
                for v, part in zip(variables, tf.split(flat, sizes) if variables else []):
                    v.assign(tf.cast(tf.reshape(part, v.shape), v.dtype))

            staged = _Input(tf.TensorSpec([sum(sizes)], tf.float32, name="flat_optimizer"))
            functions = (tf.function(get), tf.function(put, input_signature=[staged.spec]))
            self._functions.extend(functions)
            self._optimizer_fns = (*(f.get_concrete_function() for f in functions), staged)
        return self._optimizer_fns

    def get_params(self) -> np.ndarray:
        """All model variables as one fresh float32 vector [num_state]."""
        return self._get().numpy()

    def set_params(self, flat) -> None:
        """Overwrite all model variables from a flat vector [num_state] (e.g. after parameter sync)."""
        self._set(self._params_in(flat))

    def check_classifier(self) -> None:
        """Raise ValueError unless the classifier refit can retrain this model's last layer (`classifier_parts`)."""
        if getattr(self, "_body", None) is None:
            self._head, body = classifier_parts(self.model)
            self._body = tf.function(lambda x: body(x, training=False), input_signature=[self._x.spec])

    def features(self, x, batch=1000) -> np.ndarray:
        """The inputs' features: what the last layer takes, in inference mode, [n, d] float32, in chunks of
        `batch`."""
        self.check_classifier()
        return np.concatenate([self._body(self._x(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])

    def classifier(self) -> tuple[np.ndarray, np.ndarray]:
        """The last layer's kernel [d, classes] and bias [classes]."""
        self.check_classifier()
        return self._head.kernel.numpy(), self._head.bias.numpy()

    def set_classifier(self, kernel, bias) -> None:
        """Overwrite the last layer's kernel and bias (same shapes as `classifier` gives)."""
        self.check_classifier()
        self._head.kernel.assign(np.asarray(kernel, np.float32))
        self._head.bias.assign(np.asarray(bias, np.float32))

    def save(self, path) -> None:
        """The model as a `.keras` file: `keras.models.load_model(path)` gives it back (logits out, or probabilities
        with `loss_from_logits` false), for inputs as the trainer takes them (uint8 images scaled to [0, 1], float
        inputs as they are)."""
        self.model.save(path)

    def evaluate(self, x, y, batch=1000) -> tuple[float, float]:
        """Mean loss and accuracy in inference mode, in chunks of `batch` to bound memory."""
        n = len(x)
        if n == 0:
            raise ValueError("evaluate needs at least one sample")
        loss_sum, correct = 0.0, 0
        for i in range(0, n, batch):
            loss, ok = self._eval(*self.stage(x[i:i + batch], y[i:i + batch]))
            loss_sum += float(loss)
            correct += int(ok)
        return loss_sum / n, correct / n

    def tracing_count(self) -> int:
        """Total traces of this trainer's tf.functions: one each, whatever the batch sizes (tests)."""
        return sum(f.experimental_get_tracing_count() for f in self._functions)
