"""Tokenizer export (-t): the tokenizer.json form that tt-train's C++ tokenizer reads."""
import json
import os

from ..errors import TokenizerError
from ..interrupts import import_held
from ..output import atomic_output
from .hub import resolve_model

STRIP_DECODER = {"type": "Strip", "content": " ", "start": 1, "stop": 0}
SPECIAL_GPT2_TOKEN = "<|endoftext|>"


def _check_loads(text, source):
    try:
        import_held("tokenizers").Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        raise TokenizerError(f"{source}: not a usable tokenizer ({str(exc).splitlines()[0]})") from None


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read: {exc.strerror}") from None


def tt_train_llama_tokenizer(tokenizer):
    """Apply the tt-train tweak to a parsed Llama tokenizer.json (returns a new dict)."""
    tokenizer = json.loads(json.dumps(tokenizer))
    decoder = tokenizer.get("decoder")
    if decoder == STRIP_DECODER:
        tokenizer["decoder"] = None
    elif isinstance(decoder, dict) and isinstance(decoder.get("decoders"), list):
        decoder["decoders"] = [d for d in decoder["decoders"] if d != STRIP_DECODER]
    model = tokenizer.get("model")
    if not isinstance(model, dict):
        raise TokenizerError("tokenizer.json has no model section")
    model.pop("ignore_merges", None)
    if "merges" in model:
        model["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokenizer


def llama_tokenizer_text(model_dir):
    """tokenizer.json text for tt-train from a Llama-style checkpoint folder: the Strip decoder removed,
    ignore_merges deleted, merges as "a b" strings."""
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise TokenizerError(f"{model_dir}: no tokenizer.json (tt-train needs the fast tokenizer file)")
    text = _read_text(path)
    _check_loads(text, path)
    text = json.dumps(tt_train_llama_tokenizer(json.loads(text)), ensure_ascii=False)
    _check_loads(text, f"{path} (after the tt-train tweak)")
    return text


def gpt2_tokenizer_text(model_dir):
    """tokenizer.json text from a GPT-2 folder: tokenizer.json as is, or built from vocab.json + merges.txt."""
    path = os.path.join(model_dir, "tokenizer.json")
    if os.path.isfile(path):
        text = _read_text(path)
        _check_loads(text, path)
        return text
    vocab, merges = os.path.join(model_dir, "vocab.json"), os.path.join(model_dir, "merges.txt")
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
        raise TokenizerError(f"{model_dir}: no tokenizer.json, and no vocab.json + merges.txt to build one from")
    tk = import_held("tokenizers")
    try:
        tokenizer = tk.Tokenizer(tk.models.BPE.from_file(vocab, merges))
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        raise TokenizerError(f"{model_dir}: vocab.json/merges.txt unusable ({str(exc).splitlines()[0]})") from None
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    if tokenizer.token_to_id(SPECIAL_GPT2_TOKEN) is not None:
        tokenizer.add_special_tokens([tk.AddedToken(SPECIAL_GPT2_TOKEN, special=True, normalized=False)])
    return tokenizer.to_str()


def write_tokenizer(family, hf_model, output_path, revision=None):
    """Write the tokenizer of a checkpoint (folder or hub id) in the form tt-train reads, as the family
    (a Family) makes it from the folder (llama_tokenizer_text or gpt2_tokenizer_text)."""
    model_dir = resolve_model(hf_model, revision)
    text = family.tokenizer_text(model_dir)
    with atomic_output(output_path, [os.path.join(model_dir, "tokenizer.json")]) as out:
        out.write(text.encode("utf-8"))
    return output_path


HF_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "tokenizer.model", "generation_config.json")


def tokenizer_files(model_dir):
    """The tokenizer files (and generation config) of a checkpoint folder that an export carries
    over as they are: [(path, name)]."""
    return [(os.path.join(model_dir, name), name) for name in HF_SIDE_FILES
            if os.path.isfile(os.path.join(model_dir, name))]


SAMPLE_TEXT = """\
The river was low that autumn, and the boats that usually crowded the landing had gone
south before the first frost. In the mornings the fog lay thick over the water, and the
ferryman would stand on the dock with a lantern, listening for the bell of the mill
across the bank. Children walked to school along the towpath, counting the herons that
waited in the reeds. By noon the sun had burned the mist away, and the whole valley
shone: the orchards heavy with apples, the church tower white against the hills, the
road winding up toward the pass where the carts of the traders appeared each week.
People said the winter would be long, and they stacked their wood high and salted their
meat, but nobody seemed worried. There was bread in the ovens and music in the evenings,
and when the wind came down from the mountains it only made the fires burn brighter.
"""


def sample_ids(model_dir, text=None, limit=128, context=None, log=None):
    """Token ids of text (the built-in English sample when None) with the checkpoint's tokenizer.json,
    the first `limit` of them, capped at the model's context (log(notice) says so)."""
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise TokenizerError(f"{model_dir}: no tokenizer.json to turn the text into token ids")
    try:
        tokenizer = import_held("tokenizers").Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        raise TokenizerError(f"{path}: not a usable tokenizer ({str(exc).splitlines()[0]})") from None
    ids = tokenizer.encode(SAMPLE_TEXT if text is None else text).ids
    if context is not None and limit > context:
        if log is not None:
            log(f"{limit} tokens asked for, but the model's context is {context}; using {context}")
        limit = context
    ids = ids[:limit]
    if len(ids) < 2:
        raise TokenizerError(f"the text is {len(ids)} token(s) long; at least 2 are needed to predict a next token")
    return ids


CHAR_UNKNOWN = "<UNK>"  # not in a character vocabulary: an unknown character is an error, as in ttml


def char_tokenizer_json(stoi):
    """tokenizer.json of a character tokenizer (ttml's CharTokenizer: {token: id}): every character
    one token, <...> entries (its padding, begin and end markers) special tokens matched whole,
    decoding the ids' characters joined."""
    if not stoi or not all(isinstance(k, str) and isinstance(v, int) for k, v in stoi.items()):
        raise TokenizerError("the header's character tokenizer has no usable stoi table")
    tokenizers = import_held("tokenizers")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(dict(stoi), unk_token=CHAR_UNKNOWN))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), "isolated")
    tokenizer.decoder = tokenizers.decoders.Fuse()
    tokenizer.add_special_tokens([token for token in stoi if len(token) > 1])
    return tokenizer.to_str(pretty=True) + "\n"
