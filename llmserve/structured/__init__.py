"""Structured outputs: a request's GuidedDecoding compiled by xgrammar into a grammar, one matcher
per sequence, and the token mask the sampler applies each step.

  tokenizer_info.py  our Tokenizer's vocabulary as xgrammar reads it
  compiler.py        GuidedDecoding -> CompiledGrammar, cached by key, errors as InvalidParameter
  guide.py           one sequence's matcher, and the batch's bitmask applied to the logits
"""
