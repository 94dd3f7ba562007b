"""The 20 short English/code prompts that the SmolLM2 parity test and bench/single_stream.py's
greedy-agreement rows both use."""

PROMPTS = [
    "The capital of France is", "Once upon a time", "def fibonacci(n):", "The three primary colors are",
    "Water boils at", "In 1969, humans", "A haiku about the sea:", "The quick brown fox",
    "To make a cup of tea, first", "Python is a programming language that", "The largest planet in",
    "My favourite food is", "Photosynthesis is the process", "1, 2, 3, 4,", "The opposite of hot is",
    "Dear Sir or Madam,", "import numpy as np\n", "The moon orbits", "Machine learning models learn",
    "Q: What is 2 + 2?\nA:",
]
