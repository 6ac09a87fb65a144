"""Running batches through a model: the ``Runner`` interface (``base``), the single-process
runner (``model_runner``), the factory that picks it or the tensor/pipeline executor
(``factory``), and the step-latency model (``latency``)."""
