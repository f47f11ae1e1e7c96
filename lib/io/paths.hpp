// Output paths the user names (output.dir, -o FILE, --write-deck ...): folders made and files
// written with every filesystem failure turned into one UserError line naming the path and the
// reason, instead of an uncaught std::filesystem::filesystem_error.
#pragma once

#include <string>

namespace p2bw::io {

// Makes folder `dir` and its parents; it must end up a writable folder. `what` names it in the
// message ("output.dir", "--write-schedule").
void make_output_dir(const std::string& dir, const std::string& what);

// Makes the parent folder of `path` (make_output_dir) and checks `path` is not a folder.
void prepare_output_file(const std::string& path, const std::string& what);

// Writes `text` to `path` (prepare_output_file first); a failed open or write is a UserError.
void write_text_file(const std::string& path, const std::string& text, const std::string& what);

}  // namespace p2bw::io
