"""The shape of a run configuration: typed dataclasses with a docstring per field, the choices
their values take, and ``AUTO`` (a setting ``textft.recipe`` resolves from the backbone and the data).

Reading YAML files and ``section.key=value`` overrides into these types is ``textft.config``; checking
values beyond their types is ``textft.config_checks``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

AUTO = "auto"
"""Value of a training setting that textft.recipe resolves from the backbone and the data."""

TRUNCATIONS = ("head", "tail", "head+tail")
"""Which tokens of a too long text a model sees, in training and (by default) in prediction."""
LONG_TEXT = (*TRUNCATIONS, "sliding_window")
"""Prediction adds overlapping windows whose logits are pooled (textft.load, --long-text)."""
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Numeric precision of training and prediction (see textft.precision)."""
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")
BACKENDS = ("auto", "torch", "onnx")
"""Where prediction runs: PyTorch, ONNX Runtime, or auto (textft.onnx_backend decides)."""
VALUE_ALIASES = {"train.mixed_precision": {"no": "fp32"}}
"""Old names of values, still read: saved configs hold them."""
Auto = Literal["auto"]
Truncation = Literal[TRUNCATIONS]
TRANSFERS = ("auto", "full", "few_shot", "feature_extraction", "top_k", "gradual", "lora")
"""What a run trains; auto is resolved by textft.recipe (few_shot for few examples per class, else full;
lora only when asked for)."""
Transfer = Literal[TRANSFERS]
TASKS = ("auto", "single_label", "multi_label", "regression")
"""What a label is: one class, a set of classes (multi_label) or a number (regression); auto detects it."""
METRICS = ("accuracy", "macro_f1", "weighted_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss",
           "mae", "rmse", "r2", "pearson", "spearman", "loss")
"""Every validation metric a task can select the best model by (textft.tasks says which task has which)."""
TaskKind = Literal[TASKS]
Metric = Literal[("auto", *METRICS)]
PairTruncation = Literal["longest_first", "only_second"]
ThresholdTuning = Literal["auto", "per_label", "global", "none"]
RegressionLoss = Literal["mse", "huber"]
Tracker = Literal["none", "tensorboard", "wandb", "mlflow"]
Precision = Literal[PRECISIONS]
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                    "inverse_sqrt"]


@dataclass
class DataConfig:
    dataset: str | None = None
    """Dataset name on the Hugging Face Hub (e.g. ``imdb``), or ``builtin:quickstart`` for the
    small sentiment set shipped with textft. Leave empty when using local files."""
    dataset_config: str | None = None
    """Configuration (subset) name of a hub dataset, if it has several."""
    train_file: str | None = None
    """Local training file: .csv, .tsv, .json, .jsonl or .parquet."""
    validation_file: str | None = None
    """Local validation file; when absent, ``validation_split`` of train is held out."""
    test_file: str | None = None
    """Local test file, evaluated once with the final model."""
    source_name: str | None = None
    """How the reports and the model card name the training data; empty: ``dataset``, else ``train_file``.
    The service names an upload by its file name and id, not by where it keeps the file."""
    text_column: str = "text"
    """Column holding the input text."""
    label_column: str = "label"
    """Column holding the label: strings, integers or a ClassLabel."""
    label_names: list[str] | None = None
    """Names for integer labels 0..K-1 (e.g. [neg, pos]); ClassLabel names are used automatically."""
    task: TaskKind = "auto"
    """single_label (one class per text), multi_label (a list of classes per text, possibly empty),
    regression (a number per text) or auto: list-valued labels, or strings split by
    ``label_delimiter``, are multi_label; numbers that are not all whole are regression (with a
    warning); anything else is single_label."""
    oos_label: str | None = None
    """single_label: the label of known out-of-scope examples (e.g. ``oos``). Its training rows teach the
    model to reject (outlier exposure: their softmax is pushed towards uniform) and it never becomes a
    class; validation and test rows with it count as out of scope. After training, the out-of-scope
    score and threshold are chosen on validation as ``textft calibrate`` does
    (``train.oos_target_rejection``) and saved with the model: predict and serve answer this label."""
    label_delimiter: str | None = None
    """Separator of several labels in one string (e.g. ``|`` for ``joy|love`` in a CSV): multi_label."""
    text_pair_column: str | None = None
    """Column holding the second text of a pair (paraphrase, entailment, duplicate questions); the
    model reads both texts together."""
    pair_truncation: PairTruncation = "longest_first"
    """How a too long pair is cut: longest_first (tokens come off the longer text first) or
    only_second (the first text stays whole when the budget allows)."""
    standardize_targets: bool = True
    """Regression: train on (y - mean) / std of the training targets; the exported head is rescaled so
    that the model outputs values in the label's own units."""
    validation_split: float = 0.1
    """Fraction of train held out (stratified, seeded) when no validation split is given."""
    max_length: int = 256
    """Maximum tokens per text, special tokens included."""
    truncation: Truncation = "head"
    """Which tokens survive when a text is too long: head, tail, or head+tail (Sun et al. 2019).
    Prediction uses the same by default and also offers sliding_window (textft.load, --long-text)."""
    head_fraction: float = 0.25
    """With head+tail truncation: share of the token budget given to the beginning of the text."""
    drop_empty: bool = False
    """Drop rows whose text is empty or missing instead of stopping with an error."""
    group_by_length: bool = True
    """Batch training texts of similar length together (shuffled groups) to cut padding."""
    max_train_samples: int | None = None
    """Use at most this many training examples (seeded sample); for quick experiments."""
    max_eval_samples: int | None = None
    """Use at most this many validation/test examples (seeded sample)."""


@dataclass
class ModelConfig:
    name_or_path: str = "builtin:minilm"
    """Hub name or local directory of any AutoModelForSequenceClassification checkpoint;
    ``builtin:minilm`` (offline all-MiniLM-L6-v2, needs the ``offline`` extra) or
    ``builtin:tiny-bert`` (2-layer random BERT for tests)."""
    random_init: bool = False
    """Build the model from its config with random weights instead of loading weights."""
    transfer: Transfer = "auto"
    """full: train everything; few_shot: train everything with the few-shot method (the head reads the
    model's declared sentence-transformers pooling and starts as a logistic regression on the frozen
    features, batches hold several examples of each class, a supervised contrastive loss pulls them
    together, ``train.contrastive_weight``; the whole plan runs, without early stopping);
    feature_extraction: freeze the encoder, train the head; top_k: train the head and the top
    ``unfreeze_top_k`` layers; gradual: start with the head and unfreeze one more layer (top down,
    embeddings last) every ``unfreeze_every_epochs`` (ULMFiT); lora: freeze the encoder and train
    low-rank adapters in it (``lora_*`` keys, needs the ``lora`` extra) and the head in full; the saved
    model has the adapters merged in. auto: few_shot for single-label training data with at
    most 16 examples per class (median) on a pretrained encoder, else full."""
    unfreeze_top_k: int = 2
    """Encoder layers trained under ``transfer: top_k``."""
    unfreeze_every_epochs: float = 1.0
    """Under ``transfer: gradual``: epochs (fractions allowed) between two unfreezing steps."""
    lora_rank: int = 8
    """Under ``transfer: lora``: rank r of each adapter (the update of a weight is B @ A, with A r x in
    and B out x r)."""
    lora_alpha: float = 16.0
    """Under ``transfer: lora``: the adapter's output is scaled by lora_alpha / lora_rank. Kept fixed
    when the rank changes (as the LoRA authors do), so a higher rank needs no other learning rate."""
    lora_dropout: float = 0.1
    """Under ``transfer: lora``: dropout on the input of each adapter."""
    lora_target_modules: list[str] | str = "all-linear"
    """Under ``transfer: lora``: the linear layers of the encoder that get adapters: all-linear (every
    one), or names of layers, as a list or separated by commas (BERT: query, key, value, dense,
    attention.output.dense, intermediate.dense, output.dense); a name matches each layer whose
    name ends with it."""
    lora_train_pooler: bool = True
    """Under ``transfer: lora``: also train the encoder's pooler (BERT's dense layer over [CLS]) in
    full, like the head; the head itself always is."""
    dropout: float | None = None
    """Override the checkpoint's hidden, attention and classifier dropout (e.g. 0.0)."""
    freeze_word_embeddings: bool = False
    """Keep the word-embedding matrix as loaded: no gradient and no AdamW update for it (on MiniLM
    that is half of the parameters), so each step does less work; the position embeddings, the
    encoder and the head still train."""
    layer_lr_decay: float = 1.0
    """Each encoder layer below the top gets this factor times the lr of the layer above
    (1.0 = off; 0.8-0.95 is typical)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the model."""
    trust_remote_code: bool = False
    """Allow model code from the hub to run; off unless you trust the repository."""


@dataclass
class TrainConfig:
    epochs: float | Auto = AUTO
    """Passes over the training data (fractions allowed). auto: enough passes for
    max(150, 8 x classes) optimizer steps, at least 1 (3 for multi_label and for text pairs) and at
    most 20, with validation cadence and early stopping chosen to match."""
    max_steps: int | None = None
    """Stop after this many optimizer steps, whatever ``epochs`` says."""
    batch_size: int = 16
    """Examples per process per forward pass."""
    eval_batch_size: int | None = None
    """Examples per evaluation batch; defaults to twice ``batch_size``."""
    grad_accum_steps: int = 1
    """Forward passes accumulated into one optimizer step."""
    lr: float | Auto = AUTO
    """Peak learning rate of the encoder's top layer. auto: from the encoder's non-embedding
    parameters, 2e-4 for MiniLM (measured) and 3e-5 for bert-base, a power law between and beyond,
    clipped to [1e-5, 1e-3]."""
    head_lr: float | Auto = AUTO
    """Peak learning rate of the classification head. auto: 10 x lr when the head is freshly
    initialised on a pretrained encoder, else lr."""
    weight_decay: float = 0.01
    """AdamW weight decay; never applied to biases and LayerNorm weights."""
    warmup_ratio: float = 0.1
    """Share of optimizer steps spent warming the learning rate up."""
    scheduler: Scheduler = "linear"
    """Learning-rate schedule after warmup (transformers.get_scheduler names)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold (0 disables clipping)."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy loss (multi_label: targets move eps/2 towards 0.5)."""
    contrastive_weight: float = 1.0
    """Under ``model.transfer: few_shot``: weight of the supervised contrastive loss (Khosla et al. 2020)
    on the features the classification head reads, added to the cross-entropy (0: cross-entropy alone,
    and batches are not grouped by class)."""
    contrastive_temperature: float = 0.1
    """Temperature of that contrastive loss: lower values weigh the hardest negatives more."""
    class_weights: Any = "none"
    """Loss weights per class: none, balanced, or a mapping {label: weight}; for multi_label they are
    the positive-class weights (pos_weight) of each label, balanced = negatives / positives."""
    regression_loss: RegressionLoss = "mse"
    """Regression loss on the (standardised) targets: mse, or huber (less pulled by outliers)."""
    huber_delta: float = 1.0
    """With regression_loss huber: where the loss turns from quadratic to linear (standardised units)."""
    threshold_tuning: ThresholdTuning = "auto"
    """multi_label decision thresholds, chosen on the validation split and saved with the model:
    per_label (one each, best macro-F1), global (one for all labels, best micro-F1 or the chosen
    metric), none (0.5); auto: per_label when selecting by macro_f1, else global."""
    oos_target_rejection: float = 0.05
    """With ``data.oos_label``: the share of in-scope validation examples the out-of-scope threshold
    chosen after training may reject (``textft calibrate --target-rejection``)."""
    mixed_precision: Precision = "auto"
    """auto, fp32, bf16 or fp16; auto: bf16 where the hardware supports it (GPU or AVX-512/AMX CPU),
    else fp32 (``no``, the old name of fp32, is still read)."""
    seed: int = 42
    """Seed for data order, splits, initialisation and dropout."""
    eval_every_steps: int | Auto = AUTO
    """Also evaluate every N optimizer steps (0: only at the end of each epoch). auto: with an auto
    training length, up to 10 evaluations costing at most ~15% of the run; otherwise 0."""
    logging_steps: int = 10
    """Log loss, lr and throughput every N optimizer steps."""
    num_workers: int = 0
    """DataLoader worker processes."""
    metric_for_best: Metric = "auto"
    """Validation metric that picks the exported model and drives early stopping (loss, mae, rmse and
    hamming_loss: lower is better, the others higher). auto: macro_f1 for single_label and
    multi_label, rmse for regression."""
    early_stopping_patience: int | Auto = AUTO
    """Stop after this many evaluations without improvement (0: never stop early). auto: 3 when the
    training length is auto and at least 6 evaluations are planned, else 0."""
    early_stopping_min_steps: int | Auto = AUTO
    """No early stop before this many optimizer steps. auto: half of an auto training length (the
    warmup and the first part of the decay always run), else 0."""
    early_stopping_min_delta: float = 0.0
    """Smallest change of ``metric_for_best`` that counts as an improvement."""
    save_every_steps: int = 0
    """Write a resumable checkpoint every N optimizer steps (0: off)."""
    save_every_epoch: bool = False
    """Write a resumable checkpoint at the end of every epoch."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept in ``output.dir/checkpoints`` (oldest are deleted)."""
    resume_from: str | None = None
    """``latest`` (newest valid checkpoint in ``output.dir/checkpoints``, or a fresh start if
    there is none) or the path of a checkpoint directory."""
    time_budget_s: float | None = None
    """Stop training after this many seconds and export the best model so far."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    compile: bool = False
    """torch.compile the model (slow first steps; pays off on long GPU runs)."""
    padding_free: bool = False
    """GPU, BERT: lay each training batch's texts end to end in one row with variable-length
    attention, so no padding is computed (attention-probability dropout is then off)."""
    report_to: Tracker = "none"
    """Experiment tracker fed through Accelerate: none, tensorboard, wandb or mlflow."""

    def eval_batch(self) -> int:
        """Examples per evaluation batch: ``eval_batch_size``, or twice ``batch_size`` when unset."""
        return self.eval_batch_size or 2 * self.batch_size


@dataclass
class OutputConfig:
    dir: str = "runs/textft"
    """Directory that receives the final model, tokenizer, resolved config and reports."""
    overwrite: bool = False
    """Allow writing into a non-empty ``dir`` (its old contents are replaced)."""
    push_to_hub: bool = False
    """Upload the final model with a model card to ``hub_repo_id`` (token from HF_TOKEN or `hf auth login`)."""
    hub_repo_id: str | None = None
    """Hub repository (``user/name``) that ``push_to_hub`` uploads to."""
    hub_private: bool = False
    """Create the Hub repository as private."""
    save_adapter: bool | Auto = AUTO
    """With ``model.transfer: lora``, also write the adapter alone in peft's format to ``dir/adapter``
    (adapter_config.json, adapter_model.safetensors with the head, tokenizer, textft_adapter.json):
    a few MB that load on top of the base model. auto: true under lora (other modes have no adapter)."""
    log_errors: bool = False
    """Record a failure in ``dir/train_log.jsonl`` also when it happens before training starts (the
    directory is then created). A failure during training or export is always recorded in the run's
    log; the fine-tuning service sets this for its jobs, whose directories are their own."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    env_references: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """``section.key`` → the value as written, for every key whose value reads the environment
    (``${oc.env:...}``): the run uses the resolved value, anything saved keeps the reference."""

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved, logged and uploaded: a value read from the environment keeps its
        ``${oc.env:...}`` reference, so a secret passed that way never reaches a file, a tracker or the Hub."""
        data = {name: dataclasses.asdict(getattr(self, name)) for name in SECTION_TYPES}
        for dotted, written in self.env_references.items():
            section, key = dotted.split(".", 1)
            data[section][key] = written
        return data


SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "output": OutputConfig}
