// Files of texts read in the browser for the try page: .txt (one text a line), .csv and .tsv with a
// header, .jsonl or a .json array of objects.

// Rows of fields; quoted fields may hold the separator, doubled quotes and line breaks.
export function parseCsv(text, sep) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; } else if (c === '"') quoted = false; else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === sep) { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); field = "";
      if (row.length > 1 || row[0] !== "") rows.push(row);
      row = [];
    } else field += c;
  }
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  return rows;
}

// {columns (null for .txt), records (objects)} of a file's text, by its extension.
export function readTexts(name, text) {
  const ext = name.toLowerCase().split(".").pop();
  if (ext === "txt") return { columns: null, records: text.split(/\r?\n/).filter((l) => l.trim()).map((t) => ({ text: t })) };
  if (ext === "csv" || ext === "tsv") {
    const [head, ...rows] = parseCsv(text, ext === "tsv" ? "\t" : ",");
    if (!head) return { columns: [], records: [] };
    return { columns: head, records: rows.map((r) => Object.fromEntries(head.map((h, i) => [h, r[i] ?? ""]))) };
  }
  const trimmed = text.trim();
  const records = trimmed.startsWith("[") ? JSON.parse(trimmed) : trimmed.split(/\r?\n/).filter((l) => l.trim()).map((l) => JSON.parse(l));
  const columns = [...new Set(records.flatMap((r) => (r && typeof r === "object" ? Object.keys(r) : [])))];
  return { columns, records };
}

// The columns most likely to hold the first and the second text of each record.
export function guessTextColumns(columns) {
  const first = columns.find((c) => /^(text|sentence|review|content|body|query|utterance|comment)$/i.test(c)) || columns[0];
  const second = columns.find((c) => /^(text_pair|sentence2|question2|text_b|hypothesis|text2)$/i.test(c))
    || columns.find((c) => c !== first);
  return [first, second];
}

// A record's value in `column` as text ("" when missing).
export const cell = (record, column) =>
  (record && record[column] !== undefined && record[column] !== null ? String(record[column]) : "");
