#include "worker/data/clean.h"

#include <gtest/gtest.h>

#include "worker/data/corpus.h"

namespace llmt::data {
namespace {

TEST(DataCleanTextTest, NormalisesLineEndingsAndSpaces) {
  EXPECT_EQ(CleanText("  Hello   world,\tthis is\r\na test.  \r\n"),
            "Hello world, this is\na test.");
  EXPECT_EQ(CleanText("a\rb\r\n\r\nc"), "a\nb\n\nc");  // lone CR is a line break too
  EXPECT_EQ(CleanText("a\n\n\n\n\nb"), "a\n\nb");      // at most one blank line
  EXPECT_EQ(CleanText("\n\n  \n a \n\n"), "a");        // blank edges trimmed
  EXPECT_EQ(CleanText("a \n \t \n b"), "a\n\nb");      // whitespace-only line is blank
  EXPECT_EQ(CleanText(""), "");
  EXPECT_EQ(CleanText(" \t\r\n "), "");
}

TEST(DataCleanTextTest, StripsControlsAndMapsUnicodeSpaces) {
  // NUL, BEL, ESC, DEL, C1 (U+0085 is NEL -> newline, U+009B dropped), BOM, ZWSP.
  EXPECT_EQ(CleanText(std::string("a\0b\x07"
                                  "c\x1b"
                                  "d\x7f"
                                  "e",
                                  9)),
            "abcde");
  EXPECT_EQ(CleanText("x\xC2\x85y\xC2\x9Bz"), "x\nyz");
  EXPECT_EQ(CleanText("\xEF\xBB\xBFstart\xE2\x80\x8Bword"), "startword");
  // NBSP, EN SPACE, IDEOGRAPHIC SPACE collapse with ordinary spaces.
  EXPECT_EQ(CleanText("a\xC2\xA0 \xE2\x80\x82 b\xE3\x80\x80"
                      "c"),
            "a b c");
  // LINE/PARAGRAPH SEPARATOR, VT, FF break lines.
  EXPECT_EQ(CleanText("a\xE2\x80\xA8"
                      "b\x0b"
                      "c\x0c"
                      "d"),
            "a\nb\nc\nd");
  // Non-ASCII text passes through untouched (NFKC is SentencePiece's job).
  EXPECT_EQ(CleanText("caf\xC3\xA9 \xF0\x9F\x98\x80 \xEF\xAC\x81"),
            "caf\xC3\xA9 \xF0\x9F\x98\x80 \xEF\xAC\x81");
}

TEST(DataCleanTextTest, ReplacesInvalidUtf8) {
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(CleanText("a\xFF"
                      "b"),
            "a" + fffd + "b");
  EXPECT_EQ(CleanText("a\xC3"), "a" + fffd);                            // truncated sequence
  EXPECT_EQ(CleanText("\xC0\xAF"), fffd + fffd);                        // overlong '/'
  EXPECT_EQ(CleanText("\xED\xA0\x80"), fffd + fffd + fffd);             // encoded surrogate
  EXPECT_EQ(CleanText("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);  // > U+10FFFF
}

TEST(DataCleanTextTest, CountCharsCountsCodePoints) {
  EXPECT_EQ(CountChars(""), 0);
  EXPECT_EQ(CountChars("abc"), 3);
  EXPECT_EQ(CountChars("caf\xC3\xA9 \xF0\x9F\x98\x80"), 6);
}

TEST(DataSplitDocumentsTest, ParagraphsWithHeadingsAttached) {
  std::string text = CleanText(
      "Genesis 1\n\n  1 In the beginning God created the heaven and the earth.\n"
      "  2 And the earth was without form, and void.\n\n"
      "Genesis 2\n\n  1 Thus the heavens and the earth were finished.\n\n"
      "BOOK I\n\nCHAPTER 1\n\nIt was a dark night.\n\n"
      "\"Stop!\"\n\nShe said nothing.\n\n"
      "The End");
  auto docs = SplitDocuments(text);
  ASSERT_EQ(docs.size(), 6u);
  EXPECT_EQ(docs[0],
            "Genesis 1\n1 In the beginning God created the heaven and the earth.\n"
            "2 And the earth was without form, and void.");
  EXPECT_EQ(docs[1], "Genesis 2\n1 Thus the heavens and the earth were finished.");
  EXPECT_EQ(docs[2], "BOOK I\nCHAPTER 1\nIt was a dark night.");  // heading run
  EXPECT_EQ(docs[3], "\"Stop!\"");  // one-line speech is not a heading
  EXPECT_EQ(docs[4], "She said nothing.");
  EXPECT_EQ(docs[5], "The End");  // trailing heading stays a (short) document
}

TEST(DataSplitDocumentsTest, HeadingRules) {
  EXPECT_TRUE(IsHeading("Genesis 1"));
  EXPECT_TRUE(IsHeading("Song of Solomon 3"));
  EXPECT_TRUE(IsHeading("\xC3\x89pilogue"));
  EXPECT_FALSE(IsHeading("It ended."));
  EXPECT_FALSE(IsHeading("two\nlines"));
  EXPECT_FALSE(IsHeading("* * *"));
  EXPECT_FALSE(IsHeading(std::string(kMaxHeadingChars + 1, 'x')));
  EXPECT_TRUE(IsHeading(std::string(kMaxHeadingChars, 'x')));
}

TEST(DataJsonlTest, ParsesTextField) {
  EXPECT_EQ(*ParseJsonlText(R"({"id": 1, "text": "a\nb \ud83d\ude00"})"), "a\nb \xF0\x9F\x98\x80");
  auto bad = ParseJsonlText(R"({"text": "abc)");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "invalid JSON at column 14: unterminated string");
  EXPECT_EQ(ParseJsonlText(R"({"txt": "a"})").status().message(), "missing \"text\" field");
  EXPECT_EQ(ParseJsonlText(R"({"text": 3})").status().message(), "\"text\" field is not a string");
  EXPECT_EQ(ParseJsonlText(R"(["text"])").status().message(), "line is not a JSON object");
}

}  // namespace
}  // namespace llmt::data
