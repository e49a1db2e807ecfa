// Reading corpus inputs for `llmt prepare`: expanding files/directories and
// turning each file into cleaned documents (see clean.h for the unit).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace llmt::data {

struct InputFile {
  std::string path;
  bool from_directory = false;  // found by walking a directory argument
  bool jsonl = false;           // ".jsonl" extension: one {"text": ...} per line
};

// "-" as an input reads plain text from standard input (once).
inline constexpr char kStdinInput[] = "-";

// Files are taken as given; directories are walked recursively in sorted
// order, skipping hidden entries (".name") and anything under `exclude_dir`
// (the output directory, so re-running into a directory under an input does
// not ingest its own shards). A missing input is NotFound naming it.
absl::StatusOr<std::vector<InputFile>> ExpandInputs(const std::vector<std::string>& inputs,
                                                    const std::string& exclude_dir = "");

struct FileDocuments {
  std::vector<std::string> docs;  // cleaned; may include empty/short ones
  int64_t bytes = 0;              // raw file size
  std::string skipped;            // non-empty: why the file was skipped
};

// Plain text: CleanText + SplitDocuments. JSONL: each non-blank line must be a
// JSON object with a string "text" field (errors read "<file>:<line>: ...").
// A text file containing NUL bytes is binary: an error when named directly,
// skipped (with `skipped` set) when found inside a directory.
absl::StatusOr<FileDocuments> ReadDocuments(const InputFile& file);
absl::StatusOr<std::string> ReadStdin();

// Parses one JSONL line's "text" field (exposed for tests).
absl::StatusOr<std::string> ParseJsonlText(const std::string& line);

}  // namespace llmt::data
