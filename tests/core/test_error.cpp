// Error messages are one printable line: control characters, terminal escapes, C1 controls and
// invalid UTF-8 from file contents are escaped as \xNN; UTF-8 text stays; escaping is idempotent.
#include <gtest/gtest.h>

#include <string>

#include "core/error.hpp"

namespace p2bw {
namespace {

TEST(ErrorMessage, ControlCharactersAndEscapesAreEscaped) {
  EXPECT_EQ(escape_for_message("a\nb\tc\r"), "a\\x0ab\\x09c\\x0d");
  EXPECT_EQ(escape_for_message("\x1b[31mred\x1b[0m\x07"), "\\x1b[31mred\\x1b[0m\\x07");
  EXPECT_EQ(escape_for_message(std::string("nul\0x", 5)), "nul\\x00x");
  EXPECT_EQ(escape_for_message("\x7f"), "\\x7f");
}

TEST(ErrorMessage, Utf8TextStaysInvalidBytesAndC1ControlsDoNot) {
  EXPECT_EQ(escape_for_message("d·w = 4 ranks, ∇f, ok"), "d·w = 4 ranks, ∇f, ok");
  EXPECT_EQ(escape_for_message("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");  // U+1F600
  EXPECT_EQ(escape_for_message("\x9b"
                               "2J"),
            "\\x9b2J");                                              // 8-bit CSI
  EXPECT_EQ(escape_for_message("\xc2\x9b"), "\\xc2\\x9b");           // U+009B, C1 CSI
  EXPECT_EQ(escape_for_message("\xc0\xaf"), "\\xc0\\xaf");           // overlong '/'
  EXPECT_EQ(escape_for_message("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // a surrogate
  EXPECT_EQ(escape_for_message("\xe2\x88"), "\\xe2\\x88");           // truncated
}

TEST(ErrorMessage, EscapingIsIdempotentAndErrorsEscapeThemselves) {
  const std::string hostile = "latest: \x1b]0;title\x07\n\xff";
  const std::string once = escape_for_message(hostile);
  EXPECT_EQ(escape_for_message(once), once);
  EXPECT_EQ(std::string(UserError(hostile).what()), once);
  EXPECT_EQ(std::string(UserError(UserError(hostile).what()).what()), once);  // re-thrown
  EXPECT_EQ(std::string(InternalError(hostile).what()), once);
}

}  // namespace
}  // namespace p2bw
