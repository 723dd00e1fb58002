"""dropkit inside training frameworks: Lightning and the Hugging Face Trainer.

Each framework has its own module, imported only when asked for (``import dropkit`` never
loads one, and neither module is needed to use the others):

* :mod:`dropkit.integrations.common`: what every framework shares, torch only: stepping
  schedules from a framework's step counter, the rates to log, the streams' positions.
* :mod:`dropkit.integrations.lightning`: a Lightning ``Callback``.
* :mod:`dropkit.integrations.huggingface`: a transformers ``TrainerCallback``.
"""
