// SPDX-License-Identifier: MIT
// Known-answer vector files of tests/data (make_*_vectors.sh): one vector per line, fields
// separated by '|', '#' comments and empty lines skipped.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace iothubd::testing {

/// The lines of `path` with exactly `fields` fields each; a line with another count is a test
/// failure (and left out), as is a file that cannot be opened.
inline std::vector<std::vector<std::string>> readVectorFile(const std::string& path,
                                                            std::size_t fields) {
  std::ifstream file(path);
  EXPECT_TRUE(file.is_open()) << "cannot open " << path;
  std::vector<std::vector<std::string>> rows;
  std::string line;
  while (std::getline(file, line)) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    std::vector<std::string> row;
    std::stringstream stream(line);
    std::string field;
    while (std::getline(stream, field, '|')) {
      row.push_back(field);
    }
    EXPECT_EQ(row.size(), fields) << path << ": " << line;
    if (row.size() == fields) {
      rows.push_back(std::move(row));
    }
  }
  return rows;
}

}  // namespace iothubd::testing
