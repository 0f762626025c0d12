"""The documents of a corpus: which files, how each file is cut into documents, batches of them.

    files = corpus_files(["corpus/"])              # a file, a folder or a glob; .txt and .jsonl
    for batch in document_batches(files):           # about BATCH_BYTES of text per batch
        for doc in batch.docs:                       # doc.raw: the document's bytes, undecoded
            text = document_text(doc, "text")

  .jsonl  one document per line: the string under the text field; blank lines are skipped
  .txt    documents separated by <|endoftext|> (the marker itself is dropped: the encoder puts
          one before every document); a file without the marker is one document, and empty
          pieces (as after a final marker) are no documents

Reading stays in the main process and does no more than find line ends and markers; decoding,
JSON parsing and encoding happen in the workers (document_text). Every document has an index
in the corpus (0, 1, 2, ... across the files in order) that does not depend on the batching, so
an encode can be resumed from any document.
"""
import glob
import json
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".txt", ".jsonl")
EOT = "<|endoftext|>"
BATCH_BYTES = 1 << 20  # text per batch sent to a worker: large enough that the hand-off is cheap
READ_BYTES = 1 << 22


@dataclass
class Document:
    index: int   # position in the corpus, counting from 0 across all files
    label: str   # where it is, for error messages: "path:line" or "path, document k"
    kind: str    # "txt" or "jsonl"
    raw: bytes   # the .txt piece, or the JSON line
    end: int     # bytes of the corpus's files read once this document is (for progress)


@dataclass
class Batch:
    docs: list
    nbytes: int  # bytes of its documents (raw)

    @property
    def done_bytes(self):
        return self.docs[-1].end


def corpus_files(specs):
    """Sorted .txt/.jsonl files named by specs: each a file, a folder (searched recursively) or a glob."""
    files = []
    for spec in [specs] if isinstance(specs, (str, Path)) else specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{p} holds no .txt or .jsonl files")
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(f) for f in glob.glob(str(spec), recursive=True) if Path(f).is_file())
            if not found:
                raise FileNotFoundError(f"{spec}: no such file or folder, and no file matches it as a glob")
        bad = [str(f) for f in found if f.suffix not in SUFFIXES]
        if bad:
            raise ValueError(f"cannot read {bad[:3]}{' ...' if len(bad) > 3 else ''}: "
                             "the corpus takes .txt and .jsonl files")
        files.extend(found)
    return files


def _txt_documents(path):
    """(label, raw bytes, bytes of the file read) of each document of a .txt file, in blocks."""
    marker = EOT.encode()
    k, buf, read = 0, bytearray(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(READ_BYTES)
            search_from = max(0, len(buf) - len(marker) + 1)  # a marker may straddle two blocks
            buf += block
            read += len(block)
            start = 0
            while (end := buf.find(marker, search_from)) >= 0:
                if end > start:
                    yield f"{path}, document {k}", bytes(buf[start:end]), read - len(buf) + end
                    k += 1
                start = search_from = end + len(marker)
            del buf[:start]
            if not block:
                if buf:
                    yield f"{path}, document {k}", bytes(buf), read
                return


def _jsonl_documents(path):
    read = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            read += len(line)
            if line.strip():
                yield f"{path}:{line_no}", line, read


def iter_documents(files):
    """Every Document of the files, in order."""
    index = before = 0
    for path in files:
        kind = Path(path).suffix[1:]
        for label, raw, read in (_txt_documents(path) if kind == "txt" else _jsonl_documents(path)):
            yield Document(index, label, kind, raw, before + read)
            index += 1
        before += Path(path).stat().st_size


def document_batches(files, start=0, batch_bytes=BATCH_BYTES):
    """Batches of the documents from index `start` on (those before are read, not kept)."""
    docs, nbytes = [], 0
    for doc in iter_documents(files):
        if doc.index < start:
            continue
        docs.append(doc)
        nbytes += len(doc.raw)
        if nbytes >= batch_bytes:
            yield Batch(docs, nbytes)
            docs, nbytes = [], 0
    if docs:
        yield Batch(docs, nbytes)


class DocumentError(ValueError):
    """A document could not be read or encoded; the message names it."""


def document_text(doc, text_field="text"):
    """The document's text: the .txt bytes, or the JSON line's text field (UTF-8, invalid bytes kept)."""
    if doc.kind == "txt":
        return doc.raw.decode("utf-8", "surrogateescape")
    try:
        record = json.loads(doc.raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DocumentError(f"{doc.label}: not a JSON line ({e})") from None
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DocumentError(f"{doc.label}: no {text_field!r} field (found {keys}); pick the field "
                            "with --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        raise DocumentError(f"{doc.label}: the {text_field!r} field is a {type(text).__name__}, not a string")
    return text
