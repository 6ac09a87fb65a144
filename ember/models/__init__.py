"""Model implementations (Llama family, OPT), checkpoint loading and the tokenizer.

Entry points: ``ember.models.loader.load_model`` and ``ember.models.config.ModelArchConfig``.
"""
