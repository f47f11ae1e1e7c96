// Token files: p2bw's own versioned format (written by `p2bw prepare-data`), llm.c's .bin GPT-2
// shards, and raw UTF-8 text read as bytes. All load into one in-memory token array.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/deck.hpp"

namespace p2bw::data {

// p2bw token file, little-endian:
//   bytes 0..7   magic "P2BWTOK\0"
//   uint32       format version (kTokenFileVersion)
//   uint32       vocabulary size (every token is below it)
//   uint64       number of tokens
//   uint32       bytes per token (2 or 4)
//   uint32       reserved (0)
//   tokens
constexpr std::uint32_t kTokenFileVersion = 1;

struct Tokens {
  std::vector<std::int32_t> ids;  // (N)
  std::int64_t vocab = 0;         // every id is below this (256 for text)
};

// Loads `path` in `format`; a malformed file is a UserError naming the file and what is wrong.
Tokens load_tokens(const std::string& path, config::DataFormat format);

// Byte-level tokenizer: one token per byte (vocab 256).
Tokens tokenize_bytes(const std::string& text);

// Its inverse for printing: the bytes `ids` (each 0..255) as text that is safe on a terminal.
// Valid UTF-8 characters, newlines and tabs stay as they are; every other byte (a control
// character, a byte of an invalid or cut UTF-8 sequence) becomes U+FFFD, one per byte.
std::string bytes_to_text(const std::vector<std::int32_t>& ids);

// Writes a p2bw token file (atomically: to a temporary name, then renamed).
void write_token_file(const std::string& path, const Tokens& tokens);

}  // namespace p2bw::data
