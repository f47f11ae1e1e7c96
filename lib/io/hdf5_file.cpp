// HDF5 wrapper implementation; see hdf5_file.hpp.
#include "io/hdf5_file.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <type_traits>

#include "core/error.hpp"

namespace p2bw::io {

namespace {

template <class T>
hid_t memory_type() {
  if constexpr (std::is_same_v<T, float>)
    return H5T_NATIVE_FLOAT;
  else if constexpr (std::is_same_v<T, double>)
    return H5T_NATIVE_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return H5T_NATIVE_INT32;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return H5T_NATIVE_INT64;
  else if constexpr (std::is_same_v<T, std::uint8_t>)
    return H5T_NATIVE_UINT8;
  else
    static_assert(sizeof(T) == 0, "unsupported HDF5 element type");
}

Handle intermediate_groups() {
  Handle list(P2BW_HDF5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
  P2BW_HDF5_CHECK(H5Pset_create_intermediate_group(list.get(), 1));
  return list;
}

// Turns HDF5's own error stack printing off: every failure is reported through our messages.
struct SilenceHdf5 {
  SilenceHdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

}  // namespace

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    Handle old(id_);
    id_ = other.id_;
    other.id_ = -1;
  }
  return *this;
}

Handle::~Handle() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      H5Fclose(id_);
      break;
    case H5I_GROUP:
      H5Gclose(id_);
      break;
    case H5I_DATASET:
      H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      H5Tclose(id_);
      break;
    case H5I_ATTR:
      H5Aclose(id_);
      break;
    case H5I_GENPROP_LST:
      H5Pclose(id_);
      break;
    default:
      break;
  }
}

H5File::H5File(const std::string& path, Mode mode) : path_(path) {
  static SilenceHdf5 silence;
  hid_t id = -1;
  if (mode == Mode::create) {
    id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (id < 0) throw UserError(path + ": cannot create the HDF5 file (allowed: a writable path)");
  } else {
    if (!std::filesystem::is_regular_file(path))
      throw UserError(path + ": no such file (allowed: an existing HDF5 file)");
    if (H5Fis_hdf5(path.c_str()) <= 0)
      throw UserError(path + ": not an HDF5 file (allowed: an HDF5 file written by p2bw)");
    id = H5Fopen(path.c_str(), mode == Mode::read ? H5F_ACC_RDONLY : H5F_ACC_RDWR, H5P_DEFAULT);
    if (id < 0)
      throw UserError(path +
                      ": cannot open the HDF5 file (allowed: a readable, complete HDF5 file)");
  }
  file_ = Handle(id);
}

bool H5File::exists(const std::string& object) const {
  if (object == "/") return true;
  // Every prefix must exist before H5Lexists may be asked about the next component.
  size_t at = 0;
  while ((at = object.find('/', at + 1)) != std::string::npos)
    if (H5Lexists(file_.get(), object.substr(0, at).c_str(), H5P_DEFAULT) <= 0) return false;
  return H5Lexists(file_.get(), object.c_str(), H5P_DEFAULT) > 0;
}

template <class T>
void H5File::write(const std::string& name, const std::vector<T>& values,
                   const std::vector<hsize_t>& shape) {
  hsize_t count = 1;
  for (hsize_t n : shape) count *= n;
  P2BW_ASSERT(count == values.size(),
              fmt::format("{}: {} values for shape of {}", name, values.size(), count));
  Handle space(
      P2BW_HDF5_CHECK(H5Screate_simple(static_cast<int>(shape.size()), shape.data(), nullptr)));
  Handle links = intermediate_groups();
  Handle set(P2BW_HDF5_CHECK(H5Dcreate2(file_.get(), name.c_str(), memory_type<T>(), space.get(),
                                        links.get(), H5P_DEFAULT, H5P_DEFAULT)));
  P2BW_HDF5_CHECK(
      H5Dwrite(set.get(), memory_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()));
}

template <class T>
std::vector<T> H5File::read(const std::string& name, std::vector<hsize_t>* shape) const {
  if (!exists(name))
    throw UserError(
        fmt::format("{}: dataset {} is missing (allowed: a file with {})", path_, name, name));
  Handle set(P2BW_HDF5_CHECK(H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT)));
  Handle space(P2BW_HDF5_CHECK(H5Dget_space(set.get())));
  const int rank = P2BW_HDF5_CHECK(H5Sget_simple_extent_ndims(space.get()));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  P2BW_HDF5_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr));
  hsize_t count = 1;
  for (hsize_t n : dims) count *= n;
  std::vector<T> values(count);
  if (count > 0)
    P2BW_HDF5_CHECK(
        H5Dread(set.get(), memory_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()));
  if (shape) *shape = dims;
  return values;
}

template void H5File::write(const std::string&, const std::vector<float>&,
                            const std::vector<hsize_t>&);
template void H5File::write(const std::string&, const std::vector<double>&,
                            const std::vector<hsize_t>&);
template void H5File::write(const std::string&, const std::vector<std::int32_t>&,
                            const std::vector<hsize_t>&);
template void H5File::write(const std::string&, const std::vector<std::int64_t>&,
                            const std::vector<hsize_t>&);
template void H5File::write(const std::string&, const std::vector<std::uint8_t>&,
                            const std::vector<hsize_t>&);
template std::vector<float> H5File::read(const std::string&, std::vector<hsize_t>*) const;
template std::vector<double> H5File::read(const std::string&, std::vector<hsize_t>*) const;
template std::vector<std::int32_t> H5File::read(const std::string&, std::vector<hsize_t>*) const;
template std::vector<std::int64_t> H5File::read(const std::string&, std::vector<hsize_t>*) const;
template std::vector<std::uint8_t> H5File::read(const std::string&, std::vector<hsize_t>*) const;

namespace {

Handle open_object(hid_t file, const std::string& object) {
  return Handle(P2BW_HDF5_CHECK(H5Oopen(file, object.c_str(), H5P_DEFAULT)));
}

void replace_attribute(hid_t object, const std::string& name) {
  if (P2BW_HDF5_CHECK(H5Aexists(object, name.c_str())) > 0)
    P2BW_HDF5_CHECK(H5Adelete(object, name.c_str()));
}

template <class T>
void set_numeric(hid_t file, const std::string& object, const std::string& name, T value) {
  Handle target = open_object(file, object);
  replace_attribute(target.get(), name);
  Handle space(P2BW_HDF5_CHECK(H5Screate(H5S_SCALAR)));
  Handle attribute(P2BW_HDF5_CHECK(H5Acreate2(target.get(), name.c_str(), memory_type<T>(),
                                              space.get(), H5P_DEFAULT, H5P_DEFAULT)));
  P2BW_HDF5_CHECK(H5Awrite(attribute.get(), memory_type<T>(), &value));
}

Handle open_attribute(hid_t file, const std::string& path, const std::string& object,
                      const std::string& name) {
  Handle target = open_object(file, object);
  if (P2BW_HDF5_CHECK(H5Aexists(target.get(), name.c_str())) <= 0)
    throw UserError(fmt::format(
        "{}: attribute {} of {} is missing (allowed: a file written by p2bw)", path, name, object));
  return Handle(P2BW_HDF5_CHECK(H5Aopen(target.get(), name.c_str(), H5P_DEFAULT)));
}

template <class T>
T get_numeric(hid_t file, const std::string& path, const std::string& object,
              const std::string& name) {
  Handle attribute = open_attribute(file, path, object, name);
  T value{};
  P2BW_HDF5_CHECK(H5Aread(attribute.get(), memory_type<T>(), &value));
  return value;
}

}  // namespace

void H5File::set_attribute(const std::string& object, const std::string& name,
                           const std::string& value) {
  Handle target = open_object(file_.get(), object);
  replace_attribute(target.get(), name);
  Handle type(P2BW_HDF5_CHECK(H5Tcopy(H5T_C_S1)));
  P2BW_HDF5_CHECK(H5Tset_size(type.get(), H5T_VARIABLE));
  P2BW_HDF5_CHECK(H5Tset_cset(type.get(), H5T_CSET_UTF8));
  Handle space(P2BW_HDF5_CHECK(H5Screate(H5S_SCALAR)));
  Handle attribute(P2BW_HDF5_CHECK(
      H5Acreate2(target.get(), name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT)));
  const char* text = value.c_str();
  P2BW_HDF5_CHECK(H5Awrite(attribute.get(), type.get(), &text));
}

void H5File::set_attribute(const std::string& object, const std::string& name, std::int64_t value) {
  set_numeric(file_.get(), object, name, value);
}

void H5File::set_attribute(const std::string& object, const std::string& name, double value) {
  set_numeric(file_.get(), object, name, value);
}

std::string H5File::string_attribute(const std::string& object, const std::string& name) const {
  Handle attribute = open_attribute(file_.get(), path_, object, name);
  Handle type(P2BW_HDF5_CHECK(H5Aget_type(attribute.get())));
  if (H5Tget_class(type.get()) != H5T_STRING)
    throw UserError(
        fmt::format("{}: attribute {} of {} is not a string (allowed: a file written by p2bw)",
                    path_, name, object));
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle memory(P2BW_HDF5_CHECK(H5Tcopy(H5T_C_S1)));
    P2BW_HDF5_CHECK(H5Tset_size(memory.get(), H5T_VARIABLE));
    P2BW_HDF5_CHECK(H5Tset_cset(memory.get(), H5Tget_cset(type.get())));
    char* text = nullptr;
    P2BW_HDF5_CHECK(H5Aread(attribute.get(), memory.get(), &text));
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  std::string value(H5Tget_size(type.get()), '\0');
  P2BW_HDF5_CHECK(H5Aread(attribute.get(), type.get(), value.data()));
  return value.substr(0, value.find('\0'));
}

std::int64_t H5File::int_attribute(const std::string& object, const std::string& name) const {
  return get_numeric<std::int64_t>(file_.get(), path_, object, name);
}

double H5File::double_attribute(const std::string& object, const std::string& name) const {
  return get_numeric<double>(file_.get(), path_, object, name);
}

void H5File::flush() {
  P2BW_HDF5_CHECK(H5Fflush(file_.get(), H5F_SCOPE_GLOBAL));
}

}  // namespace p2bw::io
