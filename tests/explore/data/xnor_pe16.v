// A 16-lane XNOR-popcount accumulator: fixture for the synthesis-flow tests (not the bitmos RTL).
module top(input clk, input rst, input en, input [15:0] a, input [15:0] w, output reg [15:0] acc);
  wire [15:0] x = ~(a ^ w);
  integer i;
  reg [4:0] pc;
  always @* begin
    pc = 0;
    for (i = 0; i < 16; i = i + 1) pc = pc + x[i];
  end
  always @(posedge clk)
    if (rst) acc <= 0; else if (en) acc <= acc + {pc, 1'b0} - 16'd16;
endmodule
