// Checks and text helpers of p2bw's HDF5 readers; see h5_checks.hpp.
#include "io/h5_checks.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>
#include <sstream>

#include "core/error.hpp"

namespace p2bw::io::h5_checks {

namespace {

std::string scalar_text(const YAML::Node& node) {
  return node && node.IsScalar() ? node.Scalar() : std::string("?");
}

bool is_compute_name(const std::string& name) {
  return name == "F" || name == "B" || name == "Bi" || name == "Bw" ||
         name.rfind("forward", 0) == 0 || name.rfind("backward", 0) == 0;
}

}  // namespace

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string text;
  for (size_t i = 0; i < items.size(); ++i) text += (i ? separator : "") + items[i];
  return text;
}

int number_after(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0 || name.size() == prefix.size()) return -1;
  int value = -1;
  const char* last = name.data() + name.size();
  const auto [end, err] = std::from_chars(name.data() + prefix.size(), last, value);
  return err == std::errc() && end == last && value >= 0 ? value : -1;
}

std::string format_of(const H5File& file, const std::string& allowed) {
  if (!file.has_attribute("/", "format"))
    throw UserError(fmt::format("{}: no format attribute, not a file written by p2bw (allowed: {})",
                                file.path(), allowed));
  return file.string_attribute("/", "format");
}

void require_version(const H5File& file, const std::string& format, std::int64_t supported) {
  const std::int64_t version = file.int_attribute("/", "format_version");
  if (version != supported)
    throw UserError(fmt::format("{}: {} format_version {} is not supported (allowed: {})",
                                file.path(), format, version, supported));
}

hsize_t common_length(const H5File& file, const std::string& group,
                      const std::vector<std::string>& names) {
  std::vector<hsize_t> lengths;
  for (const std::string& name : names) lengths.push_back(file.length(group + "/" + name));
  if (std::adjacent_find(lengths.begin(), lengths.end(), std::not_equal_to<>()) != lengths.end()) {
    std::vector<std::string> parts;
    for (size_t i = 0; i < names.size(); ++i)
      parts.push_back(fmt::format("{} {}", names[i], lengths[i]));
    throw UserError(fmt::format(
        "{}: the datasets of {} have different lengths ({}) (allowed: one row per entry in "
        "every dataset of the group)",
        file.path(), group, join(parts)));
  }
  return lengths.empty() ? 0 : lengths.front();
}

std::vector<int> numbered_children(const H5File& file, const std::string& group,
                                   const std::string& prefix) {
  std::vector<int> numbers;
  for (const std::string& name : file.children(group)) {
    const int n = number_after(name, prefix);
    if (n < 0)
      throw UserError(fmt::format("{}: unexpected {}/{} (allowed: {}/{}<number>)", file.path(),
                                  group, name, group, prefix));
    numbers.push_back(n);
  }
  std::sort(numbers.begin(), numbers.end());
  return numbers;
}

std::pair<std::string, std::string> deck_lines(const std::string& yaml) {
  try {
    const YAML::Node deck = YAML::Load(yaml);
    std::string model = "model:";
    const YAML::Node m = deck["model"];
    if (m && m.IsMap()) {
      std::vector<std::string> items;
      if (m["kind"]) items.push_back(scalar_text(m["kind"]));
      for (const auto& entry : m) {
        const std::string key = entry.first.as<std::string>();
        if (key != "kind" && entry.second.IsScalar())
          items.push_back(key + " " + entry.second.Scalar());
      }
      model += " " + join(items);
    } else {
      model += " (none in the deck)";
    }
    const YAML::Node p = deck["pipeline"], t = deck["train"];
    const std::string schedule = fmt::format(
        "schedule {}, {} microbatches of {} sequences", p ? scalar_text(p["schedule"]) : "?",
        p ? scalar_text(p["microbatches"]) : "?", t ? scalar_text(t["microbatch_size"]) : "?");
    return {model, schedule};
  } catch (const YAML::Exception&) {
    return {"model: (the deck attribute is not valid YAML)", "schedule ?"};
  }
}

std::vector<bool> compute_codes(const std::string& action_names) {
  std::vector<bool> codes;
  std::stringstream in(action_names);
  for (std::string name; std::getline(in, name, ',');) {
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    codes.push_back(is_compute_name(name));
  }
  return codes;
}

std::pair<double, double> busy_and_span(const std::vector<std::int32_t>& kind,
                                        const std::vector<double>& start,
                                        const std::vector<double>& end,
                                        const std::vector<bool>& compute) {
  if (kind.empty()) return {0.0, 0.0};
  double busy = 0, first = start.front(), last = end.front();
  for (size_t i = 0; i < kind.size(); ++i) {
    first = std::min(first, start[i]);
    last = std::max(last, end[i]);
    if (kind[i] >= 0 && static_cast<size_t>(kind[i]) < compute.size() && compute[kind[i]])
      busy += end[i] - start[i];
  }
  return {busy, last - first};
}

}  // namespace p2bw::io::h5_checks
