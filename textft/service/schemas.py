"""The request and response models of the service API: what ``/openapi.json`` says every route takes and
answers. Routes declare them; a value that differs by task (metrics, labels, previews) is a mapping
whose keys the task defines (``GET /v1/tasks``). The error answer is ``problems.ErrorOut``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_serializer

from textft.service.textft_api import Facts


class Answer(BaseModel):
    """An answer of a fixed shape. A key the route returns that the model does not declare is an error
    (the route answers 500 and its tests fail), not dropped without a word: every field is declared."""

    model_config = ConfigDict(extra="forbid")


class Sparse(BaseModel):
    """A model whose answer holds the fields that have a value, as the record behind it does (a
    running job's progress grows as its records arrive): fields never set are left out, not null."""

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set or k in (self.__pydantic_extra__ or {})}


# --- the service ------------------------------------------------------------------------------


class HealthOut(Answer):
    status: str = Field(description="ok, or stopping while the service shuts down")
    version: str


class LimitsOut(Answer):
    max_queued_jobs: int
    max_upload_bytes: int
    max_storage_bytes: int | None = Field(description="bytes of datasets and job models the key may store")
    max_steps_per_job: int = Field(description="optimizer steps one job may run")
    max_job_seconds: float = Field(description="wall-clock seconds one job may run, its attempts together")
    job_memory_bytes: int = Field(description="memory one job's processes may use together")
    max_texts_per_prediction: int
    max_chars_per_text: int


class MeOut(Answer):
    id: str
    name: str
    admin: bool
    hub_namespaces: list[str] = Field(description="Hub users or organizations this key pushes into with the"
                                                  " service's token (keys create --hub-namespace)")
    limits: LimitsOut
    queued_jobs: int
    storage_bytes: int = Field(description="bytes of datasets and job models the key stores now")


class PresetOut(Answer):
    name: str
    summary: str = Field(description="the preset's one-line description")
    description: str
    model: str | None = Field(description="model.name_or_path of the preset")
    settings: dict[str, Any] = Field(description="section.key settings of the preset a job may override")


class AccelerateConfigOut(Answer):
    name: str
    summary: str = Field(description="the launch config's one-line description")
    description: str
    distributed_type: str
    num_processes: int
    num_machines: int
    gpus: int


# --- datasets ---------------------------------------------------------------------------------


class DatasetOut(Answer):
    id: str
    name: str
    filename: str
    format: str
    size_bytes: int
    rows: int
    text_column: str
    text_pair_column: str | None
    pairs: bool
    label_column: str
    task: str | None = Field(description="what the loader found the labels to be (GET /v1/tasks)")
    drop_empty: bool
    labels: dict[str, int] = Field(description="label name → rows that carry it (regression: the target → rows)")
    preview: list[dict[str, Any]] = Field(description="the first rows: text, text_pair (pairs), label as read")
    created_at: str | None
    owner: str | None


class ColumnsOut(Answer):
    filename: str
    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="the first rows, values as the file holds them")
    suggested: dict[str, str | None] = Field(description="text_column, label_column and text_pair_column to use")


# --- jobs -------------------------------------------------------------------------------------


class JobBody(BaseModel):
    """Body of POST /v1/jobs and POST /v1/recipe."""

    model_config = ConfigDict(extra="forbid")
    dataset: StrictStr = Field(description="id of the training dataset (POST /v1/datasets)")
    validation_dataset: StrictStr | None = Field(None, description="id of a validation dataset; default: a"
                                                 " stratified data.validation_split of the training data")
    test_dataset: StrictStr | None = Field(None, description="id of a test dataset, evaluated once at the end")
    config: StrictStr = Field("quickstart", description="preset name (GET /v1/presets)")
    overrides: dict[StrictStr, Any] = Field(default_factory=dict,
                                            description='section.key settings, e.g. {"train.lr": 3e-5}')
    accelerate_config: StrictStr | None = Field(None, description="launch config (GET /v1/accelerate-configs)")
    num_processes: StrictInt | None = Field(None, description="processes (GPUs) for an accelerate_config")
    webhook_url: StrictStr | None = Field(None, description="POST every state change of the job here, signed with"
                                          " the key's webhook secret (header X-Textft-Signature-256)")


class BestOut(Sparse):
    """The best validation result, as the training loop decided it: the model exported is the one of this step."""

    model_config = ConfigDict(extra="allow")
    metric: str
    value: float | None
    step: int | None
    epoch: float | None = None
    lower_is_better: bool | None = None


class ProgressOut(Sparse):
    """A running job's progress, from the records of its train_log.jsonl (every field once known)."""

    model_config = ConfigDict(extra="allow")
    total_steps: int | None = Field(None, description="optimizer steps the run plans")
    steps_per_epoch: int | None = None
    global_batch: int | None = None
    metric: str | None = Field(None, description="the validation metric the best model is chosen by")
    lower_is_better: bool | None = None
    task: str | None = None
    eval_every_steps: int | None = None
    step: int | None = None
    epoch: float | None = None
    loss: float | None = None
    lr: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    best: BestOut | None = None


class JobMetricsOut(Sparse):
    """What a finished job keeps of its evaluation."""

    model_config = ConfigDict(extra="allow")
    task: str
    headline: list[str] = Field(description="the task's headline metrics, in order")
    lower_is_better: list[str] = Field(description="which of them are lower-is-better")
    splits: dict[str, dict[str, Any]] = Field(description="split → headline metric → value, and num_examples")
    best: BestOut | None = None
    stop_reason: str | None = None
    optimizer_steps: int | None = None
    train_seconds: float | None = None
    labels: list[str] | None = None


class JobOut(Sparse):
    model_config = ConfigDict(extra="forbid")  # as an Answer's
    id: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    config: str
    overrides: dict[str, Any]
    accelerate_config: str | None
    dataset: str
    validation_dataset: str | None
    test_dataset: str | None
    attempt: int
    worker: str | None
    error: str | None
    stop_reason: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    cancel_requested: bool
    progress: ProgressOut
    metrics: JobMetricsOut | None
    owner: str | None
    queue_position: int | None = Field(None, description="1 for the next job to start (queued jobs only)")
    webhook_url: str | None = Field(None, description="where the job's state changes are POSTed")
    webhook_deliveries: dict[str, int] | None = Field(None, description="its webhook deliveries by state: pending,"
                                                      " delivered, failed (GET /v1/jobs/{id}/deliveries)")


class AutoSetting(Answer):
    value: Any
    reason: str


class EstimateOut(Answer):
    seconds: float | None = Field(description="expected time from the job's start to its model on this service;"
                                              " None until a job with this backbone has run here")
    training_s: float | None = None
    overhead_s: float | None = Field(None, description="start, tokenization, final evaluation and export")
    samples_per_s: float | None = None
    method: str = Field(description="measured (same backbone and max_length), scaled (same backbone, another"
                                    " max_length) or none")
    jobs: list[str] = Field(description="the earlier jobs it comes from")
    how: str = Field(description="how it was estimated, in words")


class RecipeOut(Answer):
    config: str
    auto: dict[str, AutoSetting] = Field(description="each setting the recipe chose, with its value and reason")
    facts: Facts = Field(description="what the recipe looked at (textft.recipe.Facts)")
    plan: dict[str, Any] = Field(description="the plan record the run will open its train_log.jsonl with"
                                             " (total_steps, steps_per_epoch, global_batch, metric, ...)")
    settings: dict[str, Any] = Field(description="every section.key setting the job would run with")
    estimate: EstimateOut = Field(description="the expected training time on this service, and how it was estimated")


# --- models -----------------------------------------------------------------------------------


class AdapterOut(Answer):
    """A LoRA adapter as the service stores it."""

    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: list[str] | str | None = Field(None, description="the layers of each encoder layer with adapters")
    trained_in_full: list[str] | None = Field(None, description="modules trained in full (the head, the pooler)")
    size_bytes: int = Field(description="bytes on disk of the adapter directory")


class LoraKeyOut(Answer):
    key: str
    default: Any
    type: str
    help: str


class TransferOptionsOut(Answer):
    transfers: list[str] = Field(description="model.transfer's choices")
    help: str = Field(description="what each choice trains")
    lora: list[LoraKeyOut] = Field(description="the keys of model.transfer=lora")


class ModelOut(Answer):
    id: str
    job: str
    config: str
    dataset: str
    base_model: str | None
    max_length: int | None
    truncation: str | None
    head_fraction: float | None
    task: str | None
    pairs: bool
    text_pair_column: str | None
    out_of_scope: dict[str, Any] | None = Field(description="the calibrated out-of-scope threshold, if any")
    thresholds: dict[str, Any] | None = Field(description="a multi-label model's tuned decision thresholds")
    labels: list[str] | None
    metrics: dict[str, dict[str, Any]] | None = Field(
        description="split → headline metric → value, and `intervals`: metric → its 95% bootstrap interval [low, high]")
    best: BestOut | None
    headline: list[str]
    lower_is_better: list[str]
    test_set: str | None = Field(None, description="a key of the rows the model was tested on: models with the same"
                                 " key are compared with a paired test")
    vs_best: dict[str, Any] | None = Field(None, description="against the best model on the same test set: `best`, or"
                                           " `model`, `difference`, `p_value`, `significant`, `test`, `examples`,"
                                           " `reason`; null for a model alone on its test set")
    stop_reason: str | None
    created_at: str | None
    size_bytes: int = Field(description="bytes on disk of everything the service keeps of the model")
    owner: str | None
    stored_as: Literal["model", "adapter"] = Field(
        description="model: its full weights; adapter: a LoRA adapter on its base model (base_model)")
    adapter: AdapterOut | None = Field(description="the LoRA adapter of a model stored as one")
    downloads: dict[str, str] = Field(description="format of GET .../download?format= → what the archive holds")


class PushBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo_id: StrictStr = Field(description="owner/name on the Hugging Face Hub (created if missing)")
    private: StrictBool = False
    token: StrictStr | None = Field(None, description="your own Hugging Face token: the push is made as you, into"
                                    " any repository it may write (used for this push only, never stored). Without"
                                    " it the service's token pushes, only into the namespaces of your key")


class PushOut(Answer):
    url: str
    repo_id: str


class InputLength(BaseModel):
    """How a text was read (``?explain=true``)."""

    tokens: int
    max_length: int
    truncated: bool
    mode: str = Field(description="head, tail, head+tail, longest_first, only_second or window")
    windows: int | None = None
    stride: int | None = None
    pooling: str | None = None
