// `p2bw prepare-data TEXT... --output FILE`: byte-level tokenization of text files into a p2bw
// token file (format version 1, see lib/data/token_file.hpp).
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <system_error>

#include "command.hpp"
#include "core/error.hpp"
#include "data/token_file.hpp"
#include "io/paths.hpp"

namespace p2bw::app {

Command add_prepare_data(CLI::App& app) {
  struct Options {
    std::vector<std::string> inputs;
    std::string output;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cli = app.add_subcommand(
      "prepare-data", "turn text files into a token file (byte-level tokenizer, vocab 256)");
  cli->add_option("inputs", options->inputs, "UTF-8 text files, concatenated in the given order")
      ->required()
      ->type_name("TEXT");
  cli->add_option("-o,--output", options->output, "token file to write")
      ->required()
      ->type_name("FILE");
  return {
      cli, [options](const Context& context) {
        if (!context.root()) return 0;
        namespace fs = std::filesystem;
        io::prepare_output_file(options->output, "--output");
        std::string text;
        for (const std::string& input : options->inputs) {
          std::error_code error;
          if (fs::is_directory(input, error))
            throw UserError(input + ": is a folder (allowed: readable text files)");
          // Writing the output over an input would replace the text with its tokens.
          if (fs::exists(options->output, error) && fs::equivalent(input, options->output, error))
            throw UserError(fmt::format(
                "--output {}: is also an input (allowed: a new file, not one of the inputs)",
                options->output));
          std::ifstream file(input, std::ios::binary);
          if (!file)
            throw UserError(input + ": cannot read the text file (allowed: readable text files)");
          text.append(std::istreambuf_iterator<char>(file), {});
        }
        const data::Tokens tokens = data::tokenize_bytes(text);
        data::write_token_file(options->output, tokens);
        fmt::print("wrote {}: {} tokens (byte-level, vocab {}) from {} file(s)\n", options->output,
                   tokens.ids.size(), tokens.vocab, options->inputs.size());
        return 0;
      }};
}

}  // namespace p2bw::app
