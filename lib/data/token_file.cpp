// Reading and writing token files; see token_file.hpp.
#include "data/token_file.hpp"

#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <system_error>

#include "core/error.hpp"
#include "core/utf8.hpp"

namespace p2bw::data {

namespace {

constexpr char kMagic[8] = {'P', '2', 'B', 'W', 'T', 'O', 'K', '\0'};
constexpr std::int32_t kLlmcMagic = 20240520;  // llm.c token shard, header of 256 int32

std::string read_all(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw UserError(path + ": cannot read the data file (allowed: a readable file)");
  return std::string(std::istreambuf_iterator<char>(file), {});
}

template <class T>
T read_at(const std::string& bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

[[noreturn]] void malformed(const std::string& path, const std::string& what,
                            const std::string& allowed) {
  throw UserError(fmt::format("{}: {} (allowed: {})", path, what, allowed));
}

Tokens load_p2bw(const std::string& path, const std::string& bytes) {
  constexpr size_t header = 32;
  if (bytes.size() < header || std::memcmp(bytes.data(), kMagic, 8) != 0)
    malformed(path, "not a p2bw token file", "a file written by p2bw prepare-data");
  const auto version = read_at<std::uint32_t>(bytes, 8);
  if (version != kTokenFileVersion)
    malformed(path, fmt::format("token file format version {}", version),
              fmt::format("version {}", kTokenFileVersion));
  Tokens tokens;
  tokens.vocab = read_at<std::uint32_t>(bytes, 12);
  const auto count = read_at<std::uint64_t>(bytes, 16);
  const auto width = read_at<std::uint32_t>(bytes, 24);
  if (width != 2 && width != 4) malformed(path, fmt::format("{} bytes per token", width), "2 or 4");
  if (count > (bytes.size() - header) / width || bytes.size() != header + count * width)
    malformed(path, fmt::format("{} bytes for {} tokens of {} bytes", bytes.size(), count, width),
              "a complete file; it may be truncated");
  tokens.ids.resize(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::int64_t id = width == 2 ? read_at<std::uint16_t>(bytes, header + 2 * i)
                                       : read_at<std::uint32_t>(bytes, header + 4 * i);
    if (id >= tokens.vocab)
      malformed(path,
                fmt::format("token {} at position {} is not below the vocabulary size {}", id, i,
                            tokens.vocab),
                "tokens below the vocabulary in the header");
    tokens.ids[i] = static_cast<std::int32_t>(id);
  }
  return tokens;
}

Tokens load_llmc(const std::string& path, const std::string& bytes) {
  constexpr size_t header = 256 * sizeof(std::int32_t);
  if (bytes.size() < header || read_at<std::int32_t>(bytes, 0) != kLlmcMagic)
    malformed(path, "not an llm.c token shard (bad magic)",
              "an llm.c .bin file with magic 20240520");
  const auto version = read_at<std::int32_t>(bytes, 4);
  if (version != 1)
    malformed(path, fmt::format("llm.c shard version {}", version),
              "version 1 (uint16 GPT-2 tokens)");
  const auto count = read_at<std::int32_t>(bytes, 8);
  if (count < 0 || bytes.size() != header + static_cast<size_t>(count) * 2)
    malformed(path, fmt::format("{} bytes for {} tokens", bytes.size(), count),
              "a complete file; it may be truncated");
  Tokens tokens;
  tokens.vocab = 50257;  // GPT-2 BPE
  tokens.ids.resize(static_cast<size_t>(count));
  for (std::int32_t i = 0; i < count; ++i) {
    const std::int32_t id = read_at<std::uint16_t>(bytes, header + 2 * static_cast<size_t>(i));
    if (id >= tokens.vocab)
      malformed(path,
                fmt::format("token {} at position {} is not below GPT-2's vocabulary size {}", id,
                            i, tokens.vocab),
                "GPT-2 tokens, 0 to 50256");
    tokens.ids[i] = id;
  }
  return tokens;
}

}  // namespace

Tokens tokenize_bytes(const std::string& text) {
  Tokens tokens;
  tokens.vocab = 256;
  tokens.ids.reserve(text.size());
  for (unsigned char byte : text) tokens.ids.push_back(byte);
  return tokens;
}

std::string bytes_to_text(const std::vector<std::int32_t>& ids) {
  std::string bytes;
  bytes.reserve(ids.size());
  for (std::int32_t id : ids) {
    P2BW_ASSERT(0 <= id && id < 256, "a byte token beyond 255");
    bytes.push_back(static_cast<char>(id));
  }
  std::string text;
  text.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const size_t length = utf8_printable_length(bytes, i);
    if (length > 0) {
      text.append(bytes, i, length);
      i += length;
    } else {
      text += bytes[i] == '\n' || bytes[i] == '\t' ? std::string(1, bytes[i]) : "\xef\xbf\xbd";
      ++i;
    }
  }
  return text;
}

Tokens load_tokens(const std::string& path, config::DataFormat format) {
  const std::string bytes = read_all(path);
  switch (format) {
    case config::DataFormat::text:
      return tokenize_bytes(bytes);
    case config::DataFormat::tokens:
      return load_p2bw(path, bytes);
    case config::DataFormat::llmc:
      return load_llmc(path, bytes);
  }
  return {};
}

void write_token_file(const std::string& path, const Tokens& tokens) {
  const std::uint32_t width = tokens.vocab <= 65536 ? 2 : 4;
  const std::string temporary = path + ".tmp";
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    if (!file) throw UserError(path + ": cannot write the token file (allowed: a writable path)");
    const auto put = [&file](const auto& value) {
      file.write(reinterpret_cast<const char*>(&value), sizeof(value));
    };
    file.write(kMagic, sizeof(kMagic));
    put(kTokenFileVersion);
    put(static_cast<std::uint32_t>(tokens.vocab));
    put(static_cast<std::uint64_t>(tokens.ids.size()));
    put(width);
    put(std::uint32_t{0});
    for (std::int32_t id : tokens.ids) {
      if (width == 2)
        put(static_cast<std::uint16_t>(id));
      else
        put(static_cast<std::uint32_t>(id));
    }
    if (!file.flush())
      throw UserError(path + ": writing the token file failed (allowed: a path with free space)");
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::filesystem::remove(temporary, error);
    throw UserError(path + ": cannot replace the token file: " + error.message() +
                    " (allowed: a writable file path)");
  }
}

}  // namespace p2bw::data
