"""``textft predict``: label every text of a file with a saved classifier, streamed in chunks from
a reader to a writer (``textft.prediction_files``), with a progress bar and a summary on stderr."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from textft.command_line import add_model_args, check_positive, load_classifier
from textft.errors import UserError
from textft.interrupts import terminate_as_exit


def predict_main(argv: list[str]) -> int:
    from textft.prediction_files import DEFAULT_MAX_CHARS, InputReader, OutputWriter

    parser = argparse.ArgumentParser(
        prog="textft predict", description="Label every text of a file with a saved classifier.",
        epilog="Input: csv, tsv, jsonl, parquet, or plain text with one text per line ('-' reads stdin,"
               " as plain text unless --input-format says otherwise). Output: JSON Lines or CSV with the"
               " rows in input order, each with its id (--id-column) or row number, label and score.")
    parser.add_argument("--input", required=True, help="file to label, or - for stdin")
    parser.add_argument("--output", required=True, help=".jsonl or .csv file, or - for stdout (JSON Lines)")
    parser.add_argument("--input-format", choices=["csv", "tsv", "jsonl", "parquet", "txt"],
                        help="default: from the extension (stdin: txt)")
    parser.add_argument("--output-format", choices=["jsonl", "csv"], help="default: from the extension")
    parser.add_argument("--text-column", default="text", help="column (csv/parquet) or key (jsonl) of the text")
    parser.add_argument("--text-pair-column", help="column of the second text (needed by a model trained on pairs)")
    parser.add_argument("--id-column", help="column copied to the output as 'id' (default: the row number)")
    parser.add_argument("--label-column", help="column of true labels: kept as 'true_label' and the accuracy is"
                                               " printed")
    parser.add_argument("--top-k", type=int, default=1, help="also list the k most likely labels")
    parser.add_argument("--all-scores", action="store_true", help="include every label's probability")
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="longest text (in characters) accepted")
    parser.add_argument("--chunk-size", type=int, default=4096,
                        help="texts read, sorted by length and labelled at a time (bounds the memory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_model_args(parser)
    args = parser.parse_args(argv)
    if problems := check_positive(args, ["batch_size", "top_k", "max_chars", "chunk_size", "threads"]):
        raise UserError(problems)
    if args.input != "-" and args.output != "-" and Path(args.input).resolve() == Path(args.output).resolve():
        raise UserError("'--output' must not be the input file")
    reader = InputReader(args.input, args.input_format, args.text_column, args.id_column, args.label_column,
                         args.max_chars, args.text_pair_column)
    try:
        writer = OutputWriter(args.output, args.output_format)
        clf = load_classifier(args)
        if clf.pairs and args.text_pair_column is None:
            raise UserError(f"'--text-pair-column': '{args.model}' reads text pairs; name the column of the second"
                            f" text (in training: '{clf.trained_setting('text_pair_column')}')")
        with terminate_as_exit():
            return predict_file(clf, reader, writer, args)
    finally:
        reader.close()


def predict_file(clf, reader, writer, args) -> int:
    """Reader → classifier → writer in chunks, with a progress bar and a summary on stderr."""
    from tqdm.auto import tqdm

    bar = tqdm(total=reader.size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, dynamic_ncols=True,
               desc="predict", disable=args.no_progress or None, mininterval=0.5)
    start = time.perf_counter()
    n = rejected = 0
    truths, answers = [], []
    with writer:
        for chunk in reader.chunks(args.chunk_size):
            inputs = [r.text if r.text_pair is None else {"text": r.text, "text_pair": r.text_pair} for r in chunk]
            results = clf.predict(inputs, batch_size=args.batch_size, top_k=args.top_k,
                                  return_all_scores=args.all_scores)
            records = []
            for row, res in zip(chunk, results):
                record = {"id": row.id} if args.id_column else {"row": row.number}
                record.update(res)
                if args.label_column:
                    record["true_label"] = row.label
                    if row.label is not None:
                        truths.append(row.label)
                        answers.append(res)
                rejected += bool(res.get("out_of_scope"))
                records.append(record)
            writer.write(records)
            n += len(chunk)
            bar.update(reader.bytes_read - bar.n)
            bar.set_postfix(texts=n)
        seconds = time.perf_counter() - start
        bar.close()
    where = "stdout" if args.output == "-" else args.output
    summary = (f"predicted {n:,} texts in {seconds:.1f} s ({n / max(seconds, 1e-9):,.1f} texts/s;"
               f" {clf.backend} {clf.precision}, long_text {clf.long_text}) → {where}")
    if clf.backend == "onnx" and clf.precision == "int8":
        from textft.onnx_backend import quality_note

        summary += f"\n{quality_note(clf.backend_info.get('quality'))}"
    if clf.out_of_scope is not None:
        summary += f"; {rejected:,} answered '{clf.out_of_scope['label']}'"
    print(summary, file=sys.stderr)
    if truths and (line := clf.task.agreement(truths, answers)):
        print(line, file=sys.stderr)
    return 0
