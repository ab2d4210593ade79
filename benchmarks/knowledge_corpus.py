"""The corpus and questions of the knowledge benchmarks.

Corpus: the Python Language Reference's topics as the standard library ships them (`pydoc_data.topics`, the text
`help()` shows; Python Software Foundation License 2.0, a permissive licence), 79 documents, about 465 KB. It is on
every Python, so nothing is downloaded. Questions: written for this benchmark in words that mostly differ from the
text's; each has the passage that answers it, as a phrase the relevant chunk contains (compared with whitespace
collapsed). A chunk is relevant when it holds its question's phrase.
"""

from __future__ import annotations

QUESTIONS: list[tuple[str, str]] = [
    ("How do I check a condition only while debugging, so that it is skipped in optimized runs?",
     "Assert statements are a convenient way to insert debugging"),
    ("Which statement does nothing at all and is used as a placeholder?", "is a null operation"),
    ("How do I leave a loop early?", "terminates the nearest enclosing loop"),
    ("How can I skip the rest of this iteration and go on with the next one?",
     "continues with the next cycle of the nearest enclosing loop"),
    ("When does the else clause of a try statement run?",
     "The optional \"else\" clause is executed if the control flow leaves the \"try\" suite"),
    ("Which values count as false when tested in an if statement?", "empty sequences and collections"),
    ("What is the len() function implemented by in a class?", "Called to implement the built-in function \"len()\""),
    ("How do I make a function assign to a variable at module level?", "The \"global\" statement is a declaration"),
    ("How can an inner function rebind a variable of the function around it?",
     "causes the listed identifiers to refer to previously bound variables"),
    ("How are anonymous functions written?", "are used to create anonymous functions"),
    ("In what order are operators evaluated, from the most binding to the least?",
     "operator precedence in Python, from highest precedence"),
    ("What happens when an exception is raised and nothing catches it?",
     "the interpreter terminates execution of the program"),
    ("Does a dict remember the order keys were added in?", "Dictionaries preserve insertion order"),
    ("What does returning from a generator do?",
     "In a generator function, the \"return\" statement indicates that the generator is done"),
    ("How does x += 1 work, and is the target evaluated twice?",
     "Augmented assignment is the combination, in a single statement, of a binary"),
    ("How does removing a variable name with del work?", "Deletion of a name removes the binding of that name"),
    ("What does the await expression do to a coroutine?",
     "Suspend the execution of *coroutine* on an *awaitable* object"),
    ("How do I test whether two names refer to the very same object?", "test for an object’s identity"),
    ("How is membership in a container tested?", "The operators \"in\" and \"not in\" test for membership"),
    ("Which words cannot be used as variable names?",
     "The following identifiers are used as reserved words, or *keywords*"),
    ("How do I write a number in hexadecimal in source code?", "hexinteger"),
    ("How do I write the imaginary part of a complex number?", "Imaginary literals"),
    ("How do I put a comma between thousands when formatting a number?", "thousands separator"),
    ("How do I set a breakpoint in the debugger?", "b(reak)"),
    ("How does Python decide whether two objects of different types are equal by default?",
     "The default behavior for equality comparison"),
    ("What does a yield statement mean in a function body?",
     "A \"yield\" statement is semantically equivalent to a yield expression"),
    ("How do I split a text into its lines?", "Return a list of the lines in the string, breaking at line boundaries"),
    ("How can an object save memory by declaring its attributes up front?",
     "*__slots__* allow us to explicitly declare data members"),
    ("What is the object written as three dots?", "Ellipsis"),
    ("When a with block is entered, what is done with the context manager first?",
     "The context manager’s \"__enter__()\" is loaded for later use"),
]


def corpus() -> dict[str, str]:
    """Document name -> text: one plain-text document per topic of the Python Language Reference."""
    from pydoc_data.topics import topics

    return {f"{name}.txt": text for name, text in sorted(topics.items())}


def normalized(text: str) -> str:
    return " ".join(text.split())


def relevant(chunk_text: str, phrase: str) -> bool:
    return normalized(phrase) in normalized(chunk_text)
