// Corpus cleaning and document splitting for `llmt prepare`.
//
// Document unit. Plain-text files are cut into blank-line-separated
// paragraphs. A paragraph that is a single short line without closing
// punctuation (a title such as "Genesis 1" or "CHAPTER IV") is joined to the
// paragraph after it, so headings stay with their text instead of becoming
// tiny documents that the length filter would drop for some books and keep
// for others. For the default corpus, `bible Gen1:1-Rev22:21` (KJV), this
// makes one document per chapter, heading included ("Genesis 1\n1 In the
// beginning ..."): 1189 documents of 0.2-14 KB (median 3.4 KB). Chapters are the Bible's
// natural self-contained unit: big enough that a seq_len window mostly sees
// one coherent text, small enough that the hash-based train/val split draws
// ~12 chapters from all over the book for a 1% validation set. Verse lines
// (and the hard wraps of the `bible` output) are kept as newlines.
//
// JSONL files: one document per line's "text" field, newlines kept.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace llmt::data {

// Normalises raw text (NFKC itself is left to SentencePiece's normaliser):
//  - invalid UTF-8 bytes become U+FFFD;
//  - CRLF, CR, VT, FF, NEL, U+2028, U+2029 become "\n";
//  - tab and Unicode space separators (NBSP, U+2000-U+200A, U+3000, ...) become " ";
//  - other C0/C1 controls, DEL, BOM/U+FEFF, U+200B and U+2060 are removed;
//  - runs of spaces collapse to one; each line is trimmed;
//  - at most one blank line in a row; leading/trailing blank lines removed.
std::string CleanText(std::string_view raw);

// True for a one-line paragraph that reads as a title: at most
// kMaxHeadingChars code points, contains a letter or digit, and does not end
// in sentence punctuation, a closing quote or bracket.
inline constexpr int kMaxHeadingChars = 64;
bool IsHeading(std::string_view paragraph);

// Splits text already passed through CleanText into documents: paragraphs
// separated by a blank line, each run of headings joined (with "\n") to the
// paragraph that follows it.
std::vector<std::string> SplitDocuments(std::string_view cleaned);

// Number of UTF-8 code points (continuation bytes not counted).
int64_t CountChars(std::string_view utf8);

}  // namespace llmt::data
